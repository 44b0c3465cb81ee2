"""ERNIE-Search student: one shared tower read by a dense (pooled-vector) head and a ColBERT head.

Lu et al., 2022, "ERNIE-Search: Bridging Cross-Encoder with Dual-Encoder via Self On-the-fly
Distillation for Dense Passage Retrieval". Both heads come from the *same* forward pass of one
transformer shared by queries and passages, so the late-interaction head can teach the dense head in
the same step (:class:`densekd.losses.ernie.ErnieSearchLoss`). After training only the dense head is
needed: the model *is* a :class:`~densekd.encoders.dense.DenseEncoder` (a subclass).

Data contract
-------------
* As a ``DenseEncoder``: ``encode_query(batch) / encode_passage(batch) -> float[B, D]`` pooled vectors
  (with gradients), ``encode_queries / encode_passages`` for inference, so it works unchanged with
  ``encode_corpus``, ``dense_search``, ``RetrievalEvalCallback`` and the pipeline's evaluation.
* ``embed(batch, passage) -> ErnieEmbeddings(vector[B, D], tokens[B, L, Dc], mask bool[B, L])``: both
  representations from one forward pass; tokens are L2-normalised ``Dc``-d (default 128) projections,
  ``mask`` drops padding and, on passages with ``skip_punctuation``, punctuation.
* ``compute_scores(query, passage, group_size, mask=None, in_batch=True)`` (the multi-head protocol of
  :class:`~densekd.training.trainer.DistillTrainer`; ``passage`` is group-major ``[B * G]``)::

      {"dense": float[B, G],                 # dot products of pooled vectors
       "colbert": float[B, G],               # MaxSim (scores.maxsim_grouped)
       "dense_in_batch": InBatchScores,      # [B, N] vs every passage of the DDP-global batch
       "colbert_in_batch": float[B, B * G]}  # vs the local batch's passages (token matrices of
                                             #   different lengths are not gathered across ranks)

  the two ``*_in_batch`` entries only when ``in_batch``. ``forward(query, passage, group_size=G, ...)``
  returns the same dict (the trainer goes through ``forward`` so that DDP sees the pass); without
  ``group_size`` it is ``DenseEncoder.forward``.
* ``query_only`` training (the cheap mode): ``passage`` may instead be the
  :class:`~densekd.encoders.cached_passages.CachedPassages` of a frozen passage tower
  (:class:`~densekd.index.token_states.PassageTokenStates`, computed once with the base encoder). The
  tower then runs on the queries only; the dense score is ``query vector . cached pooled vector`` and
  the ColBERT score is MaxSim against ``colbert_head(cached hidden states)``, so the ColBERT projection
  keeps training on both sides. :meth:`untie` (called by the trainer's ``freeze_passage_side``) gives
  the passage side its own frozen copy of the tower, so the saved model is a correct two-tower
  retriever whose passage vectors are exactly the base model's (or, with a passage head,
  :mod:`densekd.encoders.passage_head`, the base vectors corrected by the head, which trains on the
  cached states like the ColBERT projection; the head only touches the dense head's passage vectors).

On disk (``save_pretrained``)
-----------------------------
A :class:`DenseEncoder` folder (shared tower, config ``densekd_encoder.json``, written last) plus the
late-interaction files of :mod:`densekd.encoders.late_interaction` (head + its config, written
first), one set of tower weights for both. Hence ``DenseEncoder.from_pretrained(folder)`` loads the
trained dense retriever, ``LateInteractionEncoder.from_pretrained(folder)`` its ColBERT side and
``ErnieSearchModel.from_pretrained(folder)`` both. An untied (``query_only``-trained) model saves the
two towers in ``query/`` and ``passage/`` as an untied ``DenseEncoder`` does; its ColBERT side is the
query tower + head for queries and :meth:`PassageTokenStates.colbert_store
<densekd.index.token_states.PassageTokenStates.colbert_store>` for passages (no single-tower
``LateInteractionEncoder`` view exists for it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from densekd.encoders.cached_passages import CachedPassages, PassageStateTable, check_state_table
from densekd.encoders.dense import DenseEncoder, DenseEncoderConfig, resolve_model_path
from densekd.encoders.late_interaction import (
    LI_HEAD_NAME,
    LateInteractionConfig,
    LateInteractionEncoder,
    LateInteractionHead,
    punctuation_ids,
    read_late_interaction_config,
    save_late_interaction_files,
    token_mask,
)
from densekd.scores import InBatchScores, global_in_batch, group_scores, maxsim, maxsim_grouped

DEFAULT_COLBERT_DIM = 128


class ErnieEmbeddings(NamedTuple):
    """One forward pass, both heads: ``vector[B, D]``, ``tokens[B, L, Dc]`` and ``mask[B, L]``."""

    vector: Tensor
    tokens: Tensor
    mask: Tensor


class ErnieSearchModel(DenseEncoder):
    """Dense retriever with a ColBERT head on the same tower, for ERNIE-Search training.

    Parameters
    ----------
    config
        The dense side's settings (pooling, normalisation, lengths, prefixes); ``shared`` is False only
        for an untied (``query_only``-trained) model, which needs ``passage_model``.
    model
        The HF tower (the query tower of an untied model).
    tokenizer
        Its tokenizer.
    projection
        Optional dense projection (``config.projection_dim``).
    colbert_head
        The late-interaction projection (``hidden -> Dc``, L2-normalised).
    skip_punctuation
        Mask punctuation tokens out of passages in MaxSim.
    passage_model
        The frozen passage tower of an untied model (``None`` = shared tower).

    Examples
    --------
    >>> model = ErnieSearchModel.from_pretrained("path/to/bert", colbert_dim=128)    # doctest: +SKIP
    >>> scores = model.compute_scores(q_batch, p_batch, group_size=8)               # doctest: +SKIP
    >>> model.save_pretrained("out"); DenseEncoder.from_pretrained("out")           # doctest: +SKIP
    """

    #: score heads that ``compute_scores`` returns ("dense" is what the deployed retriever scores)
    score_heads: tuple[str, ...] = ("dense", "colbert")

    def __init__(self, config: DenseEncoderConfig, model: nn.Module, tokenizer: Any,
                 projection: nn.Linear | None, colbert_head: LateInteractionHead, skip_punctuation: bool = True,
                 passage_model: nn.Module | None = None, passage_head: nn.Module | None = None):
        if config.shared != (passage_model is None):
            raise ValueError("ErnieSearchModel: a shared config takes one tower; an untied one (shared=False, "
                             "query_only training) needs its passage_model")
        super().__init__(config, model, passage_model, tokenizer, projection, passage_head)
        self.colbert_head = colbert_head
        self.skip_punctuation = bool(skip_punctuation)
        skip = punctuation_ids(tokenizer) if skip_punctuation else []
        # non-persistent: derived from the tokenizer, and the state dict stays the tower's + heads'
        self.register_buffer("skip_ids", torch.tensor(skip, dtype=torch.long), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, colbert_dim: int | None = None,
                        skip_punctuation: bool | None = None, **overrides: Any) -> ErnieSearchModel:
        """Load an ERNIE-Search folder, or start one from any checkpoint ``DenseEncoder`` accepts.

        Parameters
        ----------
        path
            ERNIE-Search folder, densekd dense folder, late-interaction folder, sentence-transformers
            folder or plain HF checkpoint; ``None`` = bundled all-MiniLM-L6-v2.
        colbert_dim
            Size of a *new* ColBERT head (default 128); must match a saved head when given.
        skip_punctuation
            Overrides the saved value (default True for a new head).
        **overrides
            :class:`DenseEncoderConfig` fields (``shared=False`` is refused: an untied model comes from
            :meth:`untie` or from a saved untied folder).
        """
        if overrides.get("shared") is False:
            raise ValueError("ErnieSearchModel starts from one shared tower; untie() it for query_only training")
        root = Path(resolve_model_path(path))
        dense = DenseEncoder.from_pretrained(root, **overrides)
        hidden = dense.query_model.config.hidden_size
        saved = read_late_interaction_config(root)
        if saved is not None:  # a trained late-interaction head (ERNIE-Search or ColBERT folder)
            if colbert_dim is not None and colbert_dim != saved["dim"]:
                raise ValueError(f"{root} holds a ColBERT head of dim {saved['dim']}, not {colbert_dim}")
            head = LateInteractionHead.load(root / LI_HEAD_NAME, hidden, saved["dim"])
            skip = saved["skip_punctuation"] if skip_punctuation is None else skip_punctuation
        else:
            # new head: random init from torch's global RNG (seed it for reproducible runs)
            head = LateInteractionHead(hidden, colbert_dim or DEFAULT_COLBERT_DIM)
            skip = True if skip_punctuation is None else skip_punctuation
        passage = None if dense.config.shared else dense.passage_model
        return cls(dense.config, dense.query_model, dense.tokenizer, dense.projection, head, skip, passage,
                   dense.passage_head)

    @property
    def colbert_dim(self) -> int:
        """Token embedding size ``Dc`` of the ColBERT head."""
        return self.colbert_head.linear.out_features

    def untie(self) -> None:
        """Give the passage side its own tower copy (``query_only``: frozen, read from cached states).

        The ColBERT head stays one module for both sides: it is not part of the passage tower.
        """
        super().untie()

    def check_passage_cache(self, table: Any) -> PassageStateTable:
        """The ``query_only`` passage table (a :class:`~densekd.index.token_states.PassageTokenStates`
        or anything with its ``hidden_size``, ``dim`` and ``lookup``), checked against this model."""
        # a folder is opened by the index layer (PassageTokenStates.load), which this layer must not import
        return check_state_table(table, self.query_model.config.hidden_size, self.dim, "ErnieSearchModel")

    # ----------------------------------------------------------------------------- heads
    def embed(self, batch: dict[str, Tensor], passage: bool) -> ErnieEmbeddings:
        """Pooled vector, ColBERT tokens and token mask of a tokenised batch from one forward pass."""
        tower = self.passage_model if passage else self.query_model            # the same module when shared
        hidden = tower(**batch).last_hidden_state                               # [B, L, H]
        vector = self.vectors_from_hidden(hidden, batch["attention_mask"])      # [B, D]
        if passage:                                                             # the dense head's correction, if any
            vector = self.with_passage_head(hidden, batch["attention_mask"], vector)
        mask = token_mask(batch, self.skip_ids if passage else None)            # [B, L]
        return ErnieEmbeddings(vector, self.colbert_head(hidden), mask)         # tokens [B, L, Dc]

    def embed_cached(self, cached: CachedPassages) -> ErnieEmbeddings:
        """Both heads of cached passages: their pooled vectors (through the passage head if any),
        ``colbert_head(hidden)`` and the mask.

        ``cached.hidden[B, L, H]`` carries no gradient; the ColBERT projection (and a passage head) applied
        to it does.
        """
        mask = token_mask(cached.batch(), self.skip_ids)                        # [B, L]
        return ErnieEmbeddings(self.encode_passage(cached), self.colbert_head(cached.hidden), mask)

    def compute_scores(self, query: dict[str, Tensor], passage: dict[str, Tensor] | CachedPassages,
                       group_size: int, mask: Tensor | None = None,
                       in_batch: bool = True) -> dict[str, Tensor | InBatchScores]:
        """Dense and late-interaction scores of each query's group, and in-batch (module docstring).

        Parameters
        ----------
        query, passage
            Tokenised ``B`` queries and ``B * G`` group-major passages; ``passage`` may be the
            :class:`CachedPassages` of those ``B * G`` passages (``query_only``).
        group_size
            ``G``.
        mask
            ``bool[B, G]`` real (non-repeated) candidates; gathered with the dense in-batch scores.
        in_batch
            Also score every query against every passage of the batch.
        """
        q = self.embed(query, passage=False)
        p = self.embed_cached(passage) if isinstance(passage, CachedPassages) else self.embed(passage, passage=True)
        out: dict[str, Tensor | InBatchScores] = {
            "dense": group_scores(q.vector, p.vector, group_size),
            "colbert": maxsim_grouped(q.tokens, q.mask, p.tokens, p.mask, group_size),
        }
        if in_batch:
            out["dense_in_batch"] = global_in_batch(q.vector, p.vector, mask)
            out["colbert_in_batch"] = maxsim(q.tokens, q.mask, p.tokens, p.mask)
        return out

    def forward(self, query: dict[str, Tensor] | None = None, passage: dict[str, Tensor] | CachedPassages | None = None,
                group_size: int | None = None, mask: Tensor | None = None,
                in_batch: bool = True) -> dict[str, Any]:
        """``DenseEncoder.forward`` (vectors) without ``group_size``; :meth:`compute_scores` with it."""
        if group_size is None:
            return super().forward(query, passage)
        if query is None or passage is None:
            raise ValueError("compute_scores needs both the query and the passage batch")
        return self.compute_scores(query, passage, group_size, mask, in_batch)

    # ----------------------------------------------------------------------------- views and saving
    def late_interaction_config(self) -> LateInteractionConfig:
        """The ColBERT side's settings (lengths and prefixes are the dense side's)."""
        c = self.config
        return LateInteractionConfig(model_name_or_path=c.model_name_or_path, dim=self.colbert_dim,
                                     skip_punctuation=self.skip_punctuation, query_max_length=c.query_max_length,
                                     passage_max_length=c.passage_max_length, query_prefix=c.query_prefix,
                                     passage_prefix=c.passage_prefix)

    def to_dense_encoder(self) -> DenseEncoder:
        """A plain :class:`DenseEncoder` view of the dense head (shares the weights, no copy)."""
        passage = None if self.config.shared else self.passage_model
        return DenseEncoder(self.config, self.query_model, passage, self.tokenizer, self.projection, self.passage_head)

    def to_late_interaction_encoder(self) -> LateInteractionEncoder:
        """A :class:`LateInteractionEncoder` view of the ColBERT head (shares the weights, no copy):
        re-ranking, token-store search and :meth:`LateInteractionEncoder.score` of the trained head.

        Shared towers only; an untied model scores passages through :meth:`encode_query_tokens` and
        :meth:`PassageTokenStates.colbert_store <densekd.index.token_states.PassageTokenStates.colbert_store>`.
        """
        if not self.config.shared:
            raise ValueError("an untied (query_only-trained) ErnieSearchModel has two towers: use encode_query_tokens "
                             "+ PassageTokenStates.colbert_store(model.colbert_head, model.skip_ids)")
        return self._colbert_view()

    def _colbert_view(self) -> LateInteractionEncoder:
        return LateInteractionEncoder(self.late_interaction_config(), self.query_model, self.tokenizer,
                                      self.colbert_head)

    def encode_query_tokens(self, texts: list[str], batch_size: int = 128,
                            show_progress: bool = False) -> list[Any]:
        """ColBERT query tokens, ``np.float32[n_i, Dc]`` per text (the query tower; any model).

        With it the model itself is the query encoder of
        :func:`~densekd.index.late_interaction.late_interaction_search`.
        """
        return self._colbert_view().encode_query_tokens(texts, batch_size, show_progress)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Late-interaction head and config first, then the ``DenseEncoder`` folder (its config last).

        That order means a folder whose dense config exists is complete, so an interrupted save is
        never loaded with a silently re-initialised ColBERT head.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_late_interaction_files(out, self.colbert_head, self.late_interaction_config())
        super().save_pretrained(out)
