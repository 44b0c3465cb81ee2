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

Resuming
--------
The forward pass runs in chunks of whole length-sorted batches, written to a work folder beside
``out_dir`` (``.<name>.parts``) by the shared :class:`~densekd.index.chunks.ChunkWriter`, so a
killed run resumes after its last complete chunk (under the same key, batch size and chunk size).
The chunks are then assembled into the files above, the folder is published in one step and the
work folder is deleted; the batches are those of one uninterrupted pass, so the result does not
depend on the chunking. Assembling briefly needs the disk space of the states twice. Two processes
encoding the same folder at once is not supported (the first to finish deletes the work folder).

SciFact (5,183 passages, max length 256, MiniLM ``H = 384``) is ~1.2M tokens, ~0.9 GB in float16.
float16 costs ~1e-3 relative error per state; tests use float32 to compare with full mode exactly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, write_json
from densekd.data.types import Corpus, Passage
from densekd.encoders.cached_passages import CachedPassages
from densekd.encoders.tokenize import length_sorted_batches
from densekd.index._storage import atomic_dir, load_ids, read_json_file, require_keys, same_key, save_ids, save_npy
from densekd.index.chunks import ChunkWriter, corpus_digest
from densekd.index.late_interaction import TokenEmbeddingStore

# CachedPassages now lives in densekd.encoders.cached_passages (the model reads it); kept importable here
__all__ = ["CachedPassages", "PassageTokenStates", "encode_token_states"]

FORMAT = "densekd.token_states/1"
MANIFEST = "manifest.json"
KEY_FIELDS = ("format", "fingerprint", "corpus_digest", "n", "dtype", "max_length", "prefix")
DTYPES = ("float16", "float32")
STATE = "token_states_state.json"  # in the work folder, while chunks are encoded
CHUNK_ARRAYS = ("hidden", "token_ids", "vectors")
T = TypeVar("T")


@torch.inference_mode()
def encode_token_states(encoder: Any, corpus: Corpus | Sequence[Passage], out_dir: str | os.PathLike,
                        batch_size: int = 32, dtype: str = "float16", fingerprint: str = "",
                        show_progress: bool = True, chunk_size: int = 1024) -> PassageTokenStates:
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
    chunk_size
        Passages per resumable chunk, rounded up to whole batches: a killed run loses at most one
        chunk of work. It does not change the result.
    """
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if not passages or dtype not in DTYPES or batch_size < 1:
        raise ValueError(f"need a non-empty corpus, batch_size >= 1 and dtype in {DTYPES}")
    if len({p.id for p in passages}) != len(passages):
        raise ValueError("duplicate passage ids in the corpus")
    if getattr(encoder, "passage_head", None) is not None:  # the stored vectors would silently skip it
        raise ValueError("token states are a frozen tower's: encode them with the base encoder, not one with a "
                         "passage head (the head reads them: DenseEncoder.encode_cached_passages)")
    cfg, out = encoder.config, Path(out_dir)
    key = {"format": FORMAT, "fingerprint": fingerprint, "corpus_digest": corpus_digest(passages),
           "n": len(passages), "dtype": dtype, "max_length": cfg.passage_max_length, "prefix": cfg.passage_prefix}
    if (out / MANIFEST).is_file() and same_key(read_json_file(out / MANIFEST), key, KEY_FIELDS):
        return PassageTokenStates.load(out)
    texts = [p.full_text() for p in passages]
    lengths = np.array([len(ids) for ids in encoder.tokenizer([cfg.passage_prefix + t for t in texts], truncation=True,
                                                              max_length=cfg.passage_max_length)["input_ids"]])
    per_chunk = -(-max(chunk_size, 1) // batch_size)  # in batches
    # Chunks are cut from the length-sorted batch sequence, so the batches (and hence every number) are
    # those of one uninterrupted pass; chunks are reused only under the same batching.
    work_key = {**key, "batch_size": batch_size, "chunk_size": per_chunk * batch_size}
    writer = ChunkWriter(out.parent / f".{out.name}.parts", work_key, tuple(work_key), CHUNK_ARRAYS, state=STATE)
    writer.prepare()
    was_training = encoder.training
    encoder.eval()
    bar = tqdm(total=len(texts), desc="encode token states", unit="psg", disable=not show_progress)
    batches = length_sorted_batches(encoder.tokenizer, texts, cfg.passage_prefix, cfg.passage_max_length, batch_size)
    chunks = []  # corpus rows of each chunk, in batch order
    for i, part in enumerate(_groups(batches, per_chunk)):
        rows = np.concatenate([idx for idx, _ in part])
        ids = [passages[r].id for r in rows]
        if writer.load(i, ids, lambda a, r=rows: _valid_chunk(a, lengths[r], encoder, dtype)) is None:
            writer.write(i, _encode_chunk(encoder, part, passages, lengths, dtype, bar), ids)
        else:
            bar.update(len(rows))
        chunks.append(rows)
    bar.close()
    _assemble(writer, chunks, passages, lengths, out, dtype,
              {**key, "hidden_size": encoder.passage_model.config.hidden_size, "dim": int(encoder.dim)})
    shutil.rmtree(writer.out, ignore_errors=True)
    encoder.train(was_training)
    return PassageTokenStates.load(out)


def _groups(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    part: list[T] = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _encode_chunk(encoder: Any, part: list[tuple[np.ndarray, dict[str, Tensor]]], passages: list[Passage],
                  lengths: np.ndarray, dtype: str, bar: tqdm) -> dict[str, np.ndarray]:
    """One chunk's arrays: real-token states ``hidden[T_c, H]``, ``token_ids[T_c]`` and pooled
    ``vectors[n_c, D]``, passage after passage in batch order."""
    tower = encoder.passage_model
    device = next(tower.parameters()).device
    hidden, token_ids, vectors = [], [], []
    for idx, batch in part:
        batch = {k: v.to(device) for k, v in batch.items()}
        states = tower(**batch).last_hidden_state                                  # [b, L, H]
        vectors.append(encoder.vectors_from_hidden(states, batch["attention_mask"]).float().cpu().numpy())
        states, ids, mask = states.float().cpu().numpy(), batch["input_ids"].cpu().numpy(), \
            batch["attention_mask"].cpu().numpy().astype(bool)
        for row, i in enumerate(idx):
            if mask[row].sum() != lengths[i]:
                raise ValueError(f"passage {passages[i].id!r}: {mask[row].sum()} real tokens, "
                                 f"expected {lengths[i]}")
            hidden.append(states[row][mask[row]].astype(dtype))
            token_ids.append(ids[row][mask[row]].astype(np.int32))
        bar.update(len(idx))
    return {"hidden": np.concatenate(hidden), "token_ids": np.concatenate(token_ids),
            "vectors": np.concatenate(vectors)}


def _valid_chunk(arrays: dict[str, np.ndarray], lengths: np.ndarray, encoder: Any, dtype: str) -> bool:
    """Whether a chunk left by an earlier run has the shapes and types of passages with ``lengths``."""
    hidden, token_ids, vectors = (arrays[name] for name in CHUNK_ARRAYS)
    n_tokens, width = int(lengths.sum()), encoder.passage_model.config.hidden_size
    return (hidden.shape == (n_tokens, width) and hidden.dtype == np.dtype(dtype)
            and token_ids.shape == (n_tokens,) and token_ids.dtype == np.int32
            and vectors.shape == (len(lengths), encoder.dim) and vectors.dtype == np.float32)


def _assemble(writer: ChunkWriter, chunks: list[np.ndarray], passages: list[Passage], lengths: np.ndarray,
              out: Path, dtype: str, manifest: dict[str, Any]) -> None:
    """Write the final folder (module docstring) from the chunks, in corpus order, and publish it."""
    offsets = np.zeros(len(passages) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    with atomic_dir(out) as tmp:
        # written in place through a memory map: the states never need to fit in RAM at once
        hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=dtype,
                                           shape=(int(offsets[-1]), manifest["hidden_size"]))
        token_ids = np.zeros(int(offsets[-1]), dtype=np.int32)
        vectors = np.zeros((len(passages), manifest["dim"]), dtype=np.float32)
        for i, rows in enumerate(chunks):
            arrays = writer.load(i, [passages[r].id for r in rows])
            if arrays is None:
                raise DataFormatError(writer.out, f"chunk {i} vanished before the token states were assembled "
                                                  "(another process finished the same folder?)")
            start = 0
            for r in rows:
                end = start + int(lengths[r])
                hidden[offsets[r]:offsets[r + 1]] = arrays["hidden"][start:end]
                token_ids[offsets[r]:offsets[r + 1]] = arrays["token_ids"][start:end]
                start = end
            vectors[rows] = arrays["vectors"]
        hidden.flush()
        del hidden
        save_npy(tmp / "token_ids.npy", token_ids)
        save_npy(tmp / "offsets.npy", offsets)
        save_npy(tmp / "vectors.npy", vectors)
        save_ids(tmp / "ids.npy", [p.id for p in passages])
        write_json(tmp / MANIFEST, {**manifest, "n_tokens": int(offsets[-1])})


class PassageTokenStates:
    """Read access to :func:`encode_token_states` output: passage id -> token states and pooled vector.

    Usable wherever a frozen passage table is expected: :meth:`lookup` has the signature of
    :meth:`densekd.index.passage_table.PassageEmbeddingTable.lookup` (returning :class:`CachedPassages`),
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
