"""Frozen passage token states: the cache behind ``query_only`` training of a multi-head student.

An ERNIE-Search student (:class:`densekd.encoders.ernie.ErnieSearchModel`) scores passages with two
heads read off the *last-layer hidden states* of its tower: the pooled dense vector and the ColBERT
token projection. With the passage tower frozen (``train_mode: query_only``) those states never
change, so they are computed once with the base encoder and stored; training then runs the tower on
the queries only, while the ColBERT projection is applied to both the query tokens and the cached
passage states (so it keeps training). This module writes and reads that cache.

On disk (folder ``out_dir``, built under a temporary name and renamed into place when complete)
----------------------------------------------------------------------------------------------
* ``hidden.npy``: ``float16`` (or ``float32``) ``[T, H]`` hidden states of every *real* token
  (attention mask 1: ``[CLS]``, word pieces, ``[SEP]``; no padding) of every passage, stacked in
  corpus order; memory-mapped on read.
* ``token_ids.npy``: ``int32[T]`` their vocabulary ids (punctuation masks are derived from them with
  :func:`densekd.encoders.late_interaction.token_mask`, exactly as from a tokenised batch).
* ``offsets.npy``: ``int64[N + 1]``; passage ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
* ``ids.npy``: ``N`` passage ids (unicode, never pickled).
* ``vectors.npy``: ``float32[N, D]`` pooled passage vectors of the same forward pass (the encoder's
  passage embeddings: ``encode_passages`` output for the same batch size).
* ``manifest.json`` (last): the cache key (``format``, ``fingerprint``, ``corpus_digest``, ``n``,
  ``dtype``, ``max_length``, ``prefix``) plus ``hidden_size``, ``dim`` and ``n_tokens``; a complete folder
  with the same key is loaded instead of re-encoded.

SciFact (5,183 passages, max length 256, MiniLM ``H = 384``) is ~1.2M tokens, ~0.9 GB in float16.
float16 costs ~1e-3 relative error per state; tests use float32 to compare with full mode exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, write_json
from densekd.data.types import Corpus, Passage
from densekd.encoders.tokenize import length_sorted_batches
from densekd.index._storage import (
    atomic_dir, load_ids, read_json_file, require_keys, same_key, save_ids, save_npy,
)
from densekd.index.encode import corpus_digest
from densekd.index.late_interaction import TokenEmbeddingStore

__all__ = ["CachedPassages", "PassageTokenStates", "encode_token_states"]

FORMAT = "densekd.token_states/1"
MANIFEST = "manifest.json"
KEY_FIELDS = ("format", "fingerprint", "corpus_digest", "n", "dtype", "max_length", "prefix")
DTYPES = ("float16", "float32")


class CachedPassages(NamedTuple):
    """A padded batch of cached passages, in place of a tokenised passage batch.

    Attributes
    ----------
    hidden
        ``float[B, L, H]`` last-layer hidden states (zeros at padding).
    input_ids
        ``long[B, L]`` vocabulary ids (0 at padding).
    attention_mask
        ``long[B, L]``: 1 = real token.
    vectors
        ``float[B, D]`` pooled passage vectors.
    """

    hidden: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    vectors: Tensor

    def batch(self) -> dict[str, Tensor]:
        """The ``input_ids`` / ``attention_mask`` dict that :func:`token_mask` reads."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


@torch.inference_mode()
def encode_token_states(encoder: Any, corpus: Corpus | Sequence[Passage], out_dir: str | os.PathLike,
                        batch_size: int = 32, dtype: str = "float16", fingerprint: str = "",
                        show_progress: bool = True) -> PassageTokenStates:
    """Run ``encoder``'s passage tower over ``corpus`` once and store its token states (module docstring).

    Parameters
    ----------
    encoder
        A :class:`~densekd.encoders.dense.DenseEncoder` (or subclass): its ``passage_model``, tokenizer,
        ``config.passage_max_length`` / ``passage_prefix`` and ``vectors_from_hidden`` are used.
    corpus
        A :data:`Corpus` or a sequence of :class:`Passage` (``full_text()`` is encoded); the order
        fixes the rows.
    out_dir
        Output folder; reused when complete under the same key, replaced otherwise.
    batch_size
        Passages per forward pass (length-sorted batches, as ``encode_passages``).
    dtype
        Storage type of the hidden states: ``"float16"`` (default) or ``"float32"``.
    fingerprint
        Describes the model; a different value re-encodes.
    show_progress
        Progress bar over passages.
    """
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if not passages or dtype not in DTYPES or batch_size < 1:
        raise ValueError(f"need a non-empty corpus, batch_size >= 1 and dtype in {DTYPES}")
    if len({p.id for p in passages}) != len(passages):
        raise ValueError("duplicate passage ids in the corpus")
    cfg, out = encoder.config, Path(out_dir)
    key = {"format": FORMAT, "fingerprint": fingerprint, "corpus_digest": corpus_digest(passages),
           "n": len(passages), "dtype": dtype, "max_length": cfg.passage_max_length, "prefix": cfg.passage_prefix}
    if (out / MANIFEST).is_file() and same_key(read_json_file(out / MANIFEST), key, KEY_FIELDS):
        return PassageTokenStates.load(out)
    texts = [p.full_text() for p in passages]
    lengths = np.array([len(ids) for ids in encoder.tokenizer([cfg.passage_prefix + t for t in texts], truncation=True,
                                                              max_length=cfg.passage_max_length)["input_ids"]])
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    tower, hidden_size = encoder.passage_model, encoder.passage_model.config.hidden_size
    was_training = encoder.training
    encoder.eval()
    device = next(tower.parameters()).device
    with atomic_dir(out) as tmp:
        # written in place through a memory map: the states never need to fit in RAM at once
        hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=dtype,
                                           shape=(int(offsets[-1]), hidden_size))
        token_ids = np.zeros(int(offsets[-1]), dtype=np.int32)
        vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc="encode token states", unit="psg", disable=not show_progress)
        for idx, batch in length_sorted_batches(encoder.tokenizer, texts, cfg.passage_prefix,
                                                cfg.passage_max_length, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            states = tower(**batch).last_hidden_state                                  # [b, L, H]
            vectors[idx] = encoder.vectors_from_hidden(states, batch["attention_mask"]).float().cpu().numpy()
            states, ids, mask = states.float().cpu().numpy(), batch["input_ids"].cpu().numpy(), \
                batch["attention_mask"].cpu().numpy().astype(bool)
            for row, i in enumerate(idx):
                if mask[row].sum() != lengths[i]:
                    raise ValueError(f"passage {passages[i].id!r}: {mask[row].sum()} real tokens, "
                                     f"expected {lengths[i]}")
                hidden[offsets[i]:offsets[i + 1]] = states[row][mask[row]]
                token_ids[offsets[i]:offsets[i + 1]] = ids[row][mask[row]]
            bar.update(len(idx))
        bar.close()
        hidden.flush()
        del hidden
        save_npy(tmp / "token_ids.npy", token_ids)
        save_npy(tmp / "offsets.npy", offsets)
        save_npy(tmp / "vectors.npy", vectors)
        save_ids(tmp / "ids.npy", [p.id for p in passages])
        write_json(tmp / MANIFEST, {**key, "hidden_size": hidden_size, "dim": int(encoder.dim),
                                    "n_tokens": int(offsets[-1])})
    encoder.train(was_training)
    return PassageTokenStates.load(out)


class PassageTokenStates:
    """Read access to :func:`encode_token_states` output: passage id -> token states and pooled vector.

    Usable wherever a frozen passage table is expected: :meth:`lookup` has the signature of
    :meth:`densekd.training.trainer.PassageEmbeddingTable.lookup` (returning :class:`CachedPassages`),
    and ``ids`` / ``embeddings`` (the pooled vectors) make it a valid ``passage_embeddings`` for
    :class:`~densekd.training.callbacks.RetrievalEvalCallback`.

    Parameters
    ----------
    ids
        ``N`` passage ids.
    hidden
        ``[T, H]`` token states (any float dtype; a memory map stays on disk).
    token_ids
        ``int[T]`` vocabulary ids.
    offsets
        ``int64[N + 1]`` row ranges.
    vectors
        ``float32[N, D]`` pooled vectors.
    manifest
        The folder's manifest (``{}`` for an in-memory table).
    """

    def __init__(self, ids: Sequence[str], hidden: np.ndarray, token_ids: np.ndarray, offsets: np.ndarray,
                 vectors: np.ndarray, manifest: dict[str, Any] | None = None):
        n = len(ids)
        ok = (hidden.ndim == 2 and token_ids.shape == (hidden.shape[0],) and offsets.shape == (n + 1,)
              and offsets[0] == 0 and offsets[-1] == hidden.shape[0] and bool(np.all(np.diff(offsets) >= 1))
              and vectors.ndim == 2 and vectors.shape[0] == n)
        if not ok:
            raise ValueError(f"token states disagree: {n} ids, hidden {hidden.shape}, token ids {token_ids.shape}, "
                             f"offsets {offsets.shape}, vectors {vectors.shape}")
        self.ids, self.hidden, self.token_ids = list(ids), hidden, token_ids
        self.offsets, self.vectors = offsets, vectors
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self.manifest = manifest or {}

    @classmethod
    def load(cls, path: str | os.PathLike) -> PassageTokenStates:
        """Open a complete folder (hidden states memory-mapped); :class:`DataFormatError` names a bad file."""
        root = Path(path)
        manifest = read_json_file(root / MANIFEST)
        require_keys(manifest, {"format": str, "n": int, "hidden_size": int, "dim": int, "dtype": str}, root / MANIFEST)
        if manifest["format"] != FORMAT:
            raise DataFormatError(root / MANIFEST, f"unsupported format {manifest['format']!r} (expected {FORMAT!r})")
        try:
            hidden = np.load(root / "hidden.npy", mmap_mode="r", allow_pickle=False)
            arrays = [np.load(root / f"{name}.npy", allow_pickle=False) for name in ("token_ids", "offsets", "vectors")]
            obj = cls(load_ids(root / "ids.npy"), hidden, *arrays, manifest=manifest)
        except (ValueError, OSError) as err:
            raise DataFormatError(root, f"not a token-state folder ({err})") from None
        if (len(obj) != manifest["n"] or hidden.shape[1] != manifest["hidden_size"] or obj.dim != manifest["dim"]
                or hidden.dtype != np.dtype(manifest["dtype"])):
            raise DataFormatError(root / MANIFEST, "arrays disagree with the manifest")
        return obj

    @classmethod
    def coerce(cls, table: Any) -> PassageTokenStates:
        """Accept a :class:`PassageTokenStates` or the path of a folder written by :func:`encode_token_states`."""
        if isinstance(table, cls):
            return table
        if isinstance(table, (str, os.PathLike)):
            return cls.load(table)
        raise TypeError(f"cannot use {type(table).__name__} as passage token states: pass a PassageTokenStates "
                        "(densekd.index.token_states.encode_token_states) or its folder")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hidden_size(self) -> int:
        """Hidden-state width ``H``."""
        return int(self.hidden.shape[1])

    @property
    def dim(self) -> int:
        """Pooled vector width ``D``."""
        return int(self.vectors.shape[1])

    @property
    def embeddings(self) -> np.ndarray:
        """``float32[N, D]`` pooled vectors (the ``EmbeddingStore`` / ``PassageEmbeddingTable`` name)."""
        return self.vectors

    def rows(self, pids: Sequence[str]) -> list[int]:
        """Row of each id; an unknown id raises ``KeyError`` naming it."""
        try:
            return [self.row_of[pid] for pid in pids]
        except KeyError as err:
            raise KeyError(f"passage {err.args[0]!r} is not in the token-state cache; encode every training "
                           "candidate into it") from None

    def lookup(self, pids: Sequence[str], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> CachedPassages:
        """Padded :class:`CachedPassages` of ``pids`` (``L`` = their longest), on ``device``, no gradient."""
        rows = self.rows(pids)
        starts, ends = self.offsets[rows], self.offsets[[r + 1 for r in rows]]
        width = int((ends - starts).max()) if rows else 0
        hidden = np.zeros((len(rows), width, self.hidden_size), dtype=np.float32)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (s, e) in enumerate(zip(starts, ends)):
            hidden[i, :e - s] = self.hidden[s:e]
            ids[i, :e - s] = self.token_ids[s:e]
            mask[i, :e - s] = 1
        vectors = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        return CachedPassages(torch.from_numpy(hidden).to(device=device, dtype=dtype),
                              torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                              torch.from_numpy(vectors).to(device=device, dtype=dtype))

    @torch.inference_mode()
    def colbert_store(self, head: torch.nn.Module, skip_ids: Tensor | None = None, dtype: str = "float32",
                      rows_per_step: int = 65_536) -> TokenEmbeddingStore:
        """The corpus's ColBERT token store under ``head``, in memory: no passage forward pass at all.

        Parameters
        ----------
        head
            ``[..., H] -> [..., Dc]`` token projection (e.g. ``ErnieSearchModel.colbert_head``).
        skip_ids
            Vocabulary ids dropped from every passage (punctuation; ``None`` keeps all tokens).
        dtype
            Storage type of the projected tokens (``"float32"`` avoids a conversion per search).
        rows_per_step
            Token rows projected per step (bounds the temporary float32 copy).

        Returns
        -------
        TokenEmbeddingStore
            Kept tokens ``[T', Dc]`` with offsets, searchable by
            :func:`~densekd.index.late_interaction.late_interaction_search` and ``.maxsim``.
        """
        weight = next(head.parameters())
        keep = np.ones(len(self.token_ids), dtype=bool)
        if skip_ids is not None and skip_ids.numel():
            keep = ~np.isin(self.token_ids, skip_ids.cpu().numpy())
        parts = []
        for start in range(0, len(keep), rows_per_step):
            block = np.asarray(self.hidden[start:start + rows_per_step][keep[start:start + rows_per_step]], np.float32)
            x = torch.from_numpy(block).to(device=weight.device, dtype=weight.dtype)
            parts.append(head(x).float().cpu().numpy().astype(dtype, copy=False))
        kept = np.concatenate([[0], np.cumsum(keep)])          # kept tokens before each row
        offsets = kept[self.offsets].astype(np.int64)
        tokens = np.concatenate(parts)
        manifest = {"format": "in-memory", "dim": int(tokens.shape[1]), "dtype": dtype, "n": len(self)}
        return TokenEmbeddingStore(Path("."), manifest, self.ids, [tokens], [offsets])
