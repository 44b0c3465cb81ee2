"""Late-interaction (ColBERT) encoder: an HF tower, a linear projection and an L2 norm per token.

Data contract
-------------
* ``encode_query(batch) / encode_passage(batch)``: ``batch`` is a tokenizer output dict
  (``input_ids[B, L]``, ``attention_mask[B, L]``, ...); returns :class:`TokenEmbeddings`
  ``(tokens float[B, L, D], mask bool[B, L])`` with gradients. Tokens are L2-normalised; ``mask`` is
  ``False`` for padding and, on passages with ``skip_punctuation``, for punctuation tokens (ColBERT's
  skiplist: they match everything and carry no meaning).
* Score = MaxSim: the sum over real query tokens of the best cosine over real passage tokens,
  in ``[-Lq, Lq]`` (:func:`densekd.scores.maxsim` on padded tensors, :func:`densekd.scores.maxsim_ragged`
  on the ragged numpy arrays of inference).
* ``encode_query_tokens(texts) / encode_passage_tokens(texts)``: inference, a list (input order) of
  ``np.float32[n_i, D]`` arrays holding only the real tokens of each text; ``score(queries, passages)``
  the MaxSim of aligned pairs. As a teacher (candidate lists, a fingerprint, :func:`rerank
  <densekd.teachers.rerank.rerank>`) it is wrapped by
  :class:`~densekd.teachers.late_interaction.LateInteractionTeacher`.

On disk (``save_pretrained``)
-----------------------------
``densekd_late_interaction.json`` (the :class:`LateInteractionConfig`, written last: it marks a
complete folder), the HF tower and tokenizer files in the folder itself, and
``late_interaction_head.safetensors`` (``linear.weight[D, H]``). A trained
:class:`~densekd.encoders.ernie.ErnieSearchModel` folder holds exactly these files next to its
:class:`~densekd.encoders.dense.DenseEncoder` files (one tower), so
``LateInteractionEncoder.from_pretrained`` loads its ColBERT side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from densekd.data.io import DataFormatError, atomic_path, atomic_write
from densekd.data.types import Passage
from densekd.encoders.dense import _load_tower, resolve_model_path
from densekd.encoders.tokenize import length_sorted_batches, tokenize_texts
from densekd.scores import maxsim_ragged

LI_CONFIG_NAME = "densekd_late_interaction.json"
LI_HEAD_NAME = "late_interaction_head.safetensors"


@dataclass
class LateInteractionConfig:
    """Settings of a :class:`LateInteractionEncoder`.

    Attributes
    ----------
    model_name_or_path
        HF checkpoint of the tower; ``None`` = bundled all-MiniLM-L6-v2.
    dim
        Token embedding size after the projection (ColBERT: 128).
    skip_punctuation
        Mask punctuation tokens out of passages (ColBERT's default); queries keep every token.
    query_max_length, passage_max_length
        Truncation lengths in tokens.
    query_prefix, passage_prefix
        Strings prepended before tokenising.
    """

    model_name_or_path: str | None = None
    dim: int = 128
    skip_punctuation: bool = True
    query_max_length: int = 64
    passage_max_length: int = 256
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")


class TokenEmbeddings(NamedTuple):
    """Token embeddings of a batch: ``tokens[B, L, D]`` (L2-normalised) and ``mask[B, L]`` (bool)."""

    tokens: torch.Tensor
    mask: torch.Tensor


class LateInteractionHead(nn.Module):
    """``hidden[..., H] -> normalize(W hidden)[..., D]``: ColBERT's bias-free projection and L2 norm."""

    def __init__(self, hidden_size: int, dim: int = 128):
        super().__init__()
        self.linear = nn.Linear(hidden_size, dim, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.linear(hidden), p=2, dim=-1)

    def save(self, path: Path) -> None:
        """Write the weights as safetensors (atomically)."""
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path: Path, hidden_size: int, dim: int) -> LateInteractionHead:
        """Read :meth:`save` output, checking the shape against ``hidden_size`` and ``dim``."""
        head = cls(hidden_size, dim)
        state = load_file(str(path))
        if tuple(state.get("linear.weight", torch.empty(0)).shape) != (dim, hidden_size):
            raise DataFormatError(path, f"expected linear.weight of shape {(dim, hidden_size)}")
        head.load_state_dict(state, strict=True)
        return head


def punctuation_ids(tokenizer: Any) -> list[int]:
    """Ids of the ASCII punctuation characters that the tokenizer keeps as one token each."""
    ids = set()
    for ch in string.punctuation:
        pieces = tokenizer.encode(ch, add_special_tokens=False)
        if len(pieces) == 1:
            ids.add(pieces[0])
    return sorted(ids)


def token_mask(batch: dict[str, torch.Tensor], skip_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``bool[B, L]``: real tokens of ``batch`` (``attention_mask``), minus any id in ``skip_ids``."""
    mask = batch["attention_mask"].bool()
    if skip_ids is not None and skip_ids.numel():
        mask = mask & ~torch.isin(batch["input_ids"], skip_ids.to(batch["input_ids"].device))
    return mask


class LateInteractionEncoder(nn.Module):
    """A ColBERT-style late-interaction retriever on an HF transformer (module docstring).

    Examples
    --------
    >>> enc = LateInteractionEncoder.from_pretrained()                       # doctest: +SKIP
    >>> enc.score(["what is aspirin"], ["Aspirin is a drug."])              # doctest: +SKIP
    array([7.31], dtype=float32)
    """

    def __init__(self, config: LateInteractionConfig, model: nn.Module, tokenizer: Any,
                 head: LateInteractionHead):
        super().__init__()
        self.config, self.model, self.tokenizer, self.head = config, model, tokenizer, head
        skip = punctuation_ids(tokenizer) if config.skip_punctuation else []
        # a buffer so it follows .to(device); not persistent: it is derived from the tokenizer
        self.register_buffer("skip_ids", torch.tensor(skip, dtype=torch.long), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **overrides: Any) -> LateInteractionEncoder:
        """Load a densekd late-interaction folder, or start a new head on a plain HF checkpoint.

        A new head is randomly initialised (seed torch for reproducibility); ``overrides`` replace
        :class:`LateInteractionConfig` fields (``dim`` only when the head is new).
        """
        root = Path(resolve_model_path(path))
        unknown = set(overrides) - {f.name for f in dataclasses.fields(LateInteractionConfig)}
        if unknown:
            raise ValueError(f"unknown LateInteractionConfig fields: {sorted(unknown)}")
        saved = read_late_interaction_config(root)
        config = LateInteractionConfig(**{**(saved or {"model_name_or_path": str(root)}), **overrides})
        model = _load_tower(str(root))
        hidden = model.config.hidden_size
        if saved is not None:
            if config.dim != saved["dim"]:
                raise ValueError(f"{root} holds a trained head of dim {saved['dim']}; cannot override dim")
            head = LateInteractionHead.load(root / LI_HEAD_NAME, hidden, config.dim)
        else:
            head = LateInteractionHead(hidden, config.dim)
        return cls(config, model, AutoTokenizer.from_pretrained(str(root)), head)

    @property
    def dim(self) -> int:
        """Token embedding size ``D``."""
        return self.config.dim

    # ----------------------------------------------------------------------------- forward
    def tokenize_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise queries (prefix, truncation at ``query_max_length``, padding to the longest)."""
        return tokenize_texts(self.tokenizer, texts, self.config.query_prefix, self.config.query_max_length)

    def tokenize_passages(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise passages (prefix, truncation at ``passage_max_length``, padding to the longest)."""
        return tokenize_texts(self.tokenizer, texts, self.config.passage_prefix, self.config.passage_max_length)

    def _embed(self, batch: dict[str, torch.Tensor], passage: bool) -> TokenEmbeddings:
        hidden = self.model(**batch).last_hidden_state                          # [B, L, H]
        return TokenEmbeddings(self.head(hidden), token_mask(batch, self.skip_ids if passage else None))

    def encode_query(self, batch: dict[str, torch.Tensor]) -> TokenEmbeddings:
        """Query token embeddings ``[B, Lq, D]`` and mask ``[B, Lq]`` (differentiable)."""
        return self._embed(batch, passage=False)

    def encode_passage(self, batch: dict[str, torch.Tensor]) -> TokenEmbeddings:
        """Passage token embeddings ``[B, Lp, D]`` and mask ``[B, Lp]`` (punctuation masked; differentiable)."""
        return self._embed(batch, passage=True)

    def forward(self, query: dict[str, torch.Tensor] | None = None,
                passage: dict[str, torch.Tensor] | None = None) -> dict[str, TokenEmbeddings]:
        """Encode whichever sides are given: ``{"query": TokenEmbeddings, "passage": TokenEmbeddings}``."""
        out = {}
        if query is not None:
            out["query"] = self.encode_query(query)
        if passage is not None:
            out["passage"] = self.encode_passage(passage)
        return out

    # ----------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def _encode_texts(self, texts: list[str], passage: bool, batch_size: int,
                      show_progress: bool) -> list[np.ndarray]:
        cfg = self.config
        prefix, max_len = ((cfg.passage_prefix, cfg.passage_max_length) if passage
                           else (cfg.query_prefix, cfg.query_max_length))
        was_training = self.training
        self.eval()
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        bar = tqdm(total=len(texts), desc="encode tokens", unit="text", disable=not show_progress)
        # length-sorted batches: each pads to nearly its own length
        for idx, batch in length_sorted_batches(self.tokenizer, texts, prefix, max_len, batch_size):
            batch = {k: v.to(self.skip_ids.device) for k, v in batch.items()}
            tokens, mask = self._embed(batch, passage)
            tokens, mask = tokens.float().cpu().numpy(), mask.cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = tokens[row][mask[row]]
            bar.update(len(idx))
        bar.close()
        self.train(was_training)
        return out

    def encode_query_tokens(self, texts: list[str], batch_size: int = 128,
                            show_progress: bool = False) -> list[np.ndarray]:
        """Per query, ``np.float32[n_i, D]`` real-token embeddings, in input order."""
        return self._encode_texts(list(texts), False, batch_size, show_progress)

    def encode_passage_tokens(self, texts: list[str] | list[Passage], batch_size: int = 32,
                              show_progress: bool = False) -> list[np.ndarray]:
        """Per passage, ``np.float32[n_i, D]`` kept-token embeddings; ``Passage`` records use ``full_text()``."""
        texts = [t.full_text() if isinstance(t, Passage) else t for t in texts]
        return self._encode_texts(texts, True, batch_size, show_progress)

    def score(self, query_texts: list[str], passage_texts: list[str], batch_size: int = 32) -> np.ndarray:
        """MaxSim of aligned pairs ``(query_texts[i], passage_texts[i])``, ``np.float32[N]``.

        Each distinct text is encoded once, so scoring one query against many passages is cheap.
        """
        if len(query_texts) != len(passage_texts):
            raise ValueError(f"{len(query_texts)} queries for {len(passage_texts)} passages: pairs must align")
        uq, up = list(dict.fromkeys(query_texts)), list(dict.fromkeys(passage_texts))
        q_emb = dict(zip(uq, self.encode_query_tokens(uq, batch_size)))
        p_emb = dict(zip(up, self.encode_passage_tokens(up, batch_size)))
        return np.array([maxsim_ragged(q_emb[q], p_emb[p], np.array([0, len(p_emb[p])]))[0]
                         for q, p in zip(query_texts, passage_texts)], dtype=np.float32)

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write tower, tokenizer, head (safetensors) and config (last) to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        save_late_interaction_files(out, self.head, self.config)


def save_late_interaction_files(out: Path, head: LateInteractionHead, config: LateInteractionConfig) -> None:
    """Write the head weights, then the config that marks the late-interaction side complete."""
    head.save(out / LI_HEAD_NAME)
    with atomic_write(out / LI_CONFIG_NAME) as f:
        json.dump(dataclasses.asdict(config), f, indent=2)


def read_late_interaction_config(root: Path) -> dict[str, Any] | None:
    """The saved :class:`LateInteractionConfig` fields of ``root``, or ``None`` when it has none."""
    path = root / LI_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        LateInteractionConfig(**saved)  # validates the field names and values
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise DataFormatError(path, f"not a late-interaction config ({err})") from None
    if not (root / LI_HEAD_NAME).is_file():
        raise DataFormatError(root / LI_HEAD_NAME, "missing: the late-interaction head weights")
    return saved
