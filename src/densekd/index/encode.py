"""Encode a corpus into chunked, resumable, memory-mappable embedding files.

The encoder is anything with ``encode_passages(texts: list[str], batch_size: int, show_progress:
bool) -> np.float32[N, H]`` (e.g. :class:`densekd.encoders.dense.DenseEncoder`); it sees
:meth:`Passage.full_text` (title and text).

On-disk format (folder ``out_dir``)
-----------------------------------
* ``emb_00000.npy``, ``emb_00001.npy``, ...: float32 ``[n_i, dim]`` embeddings of consecutive corpus
  slices of ``chunk_size`` passages (corpus order), each written atomically;
* ``ids_00000.npy``, ...: the chunk's passage ids, 1-D unicode array (never pickled);
* ``encode_state.json``: present only while encoding; the run's cache key (``format``,
  ``fingerprint``, ``corpus_digest``, ``n``, ``chunk_size``). Chunks are reused on resume only under
  the same key, so a killed run picks up after its last complete chunk;
* ``manifest.json``: written **last** and marks completion: the cache key plus ``dim`` and
  ``chunks`` (``[{"emb": name, "ids": name, "n": int}]``). Its content is deterministic (no
  timestamps), so an interrupted-then-resumed run ends byte-for-byte equal to an uninterrupted one.

Cache key
---------
``fingerprint`` is the caller's description of the model and its settings (checkpoint, pooling, max
length, ...); ``corpus_digest`` hashes every passage id and text. When ``manifest.json`` carries the
same key, :func:`encode_corpus` encodes nothing and just loads the store.

Sharding
--------
With ``num_shards=N, shard_index=k`` a process encodes only chunks ``i % N == k`` into the same
folder; chunk files are disjoint, so shards never write the same file. The cache key does not
include ``N``: any mix of shard counts, resumes and single runs yields the same files.
``manifest.json`` is written only once every chunk exists, by :func:`finalize_encoding`, which checks
each chunk's ids against the corpus order (and is idempotent); the result is byte-for-byte the
one-process encoding. Who finalizes: under torchrun (both ``None``; a gloo group is started when
none exists) rank 0 resets a stale folder before the others start and finalizes after a barrier;
independent processes (explicit ``N``, ``k``) each try after their own chunks, and the hard-linked
manifest makes exactly one of them the finisher. Independent shards must share one cache key; if
they start together on a folder of another key, reset races are possible: use a fresh folder.

Memory
------
:meth:`EmbeddingStore.iter_chunks` yields read-only memory maps (``np.load(mmap_mode="r")``): the
OS pages rows in as they are read, so streaming over a store larger than RAM is fine.
:attr:`EmbeddingStore.embeddings` is a memory map only when the store has one chunk; with several it
concatenates them, which reads everything into RAM (``n * dim * 4`` bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, require_file, write_json
from densekd.data.types import Corpus, Passage
from densekd.index._storage import (
    load_ids, read_json_file, require_keys, same_key, save_ids, save_npy,
)
from densekd.index.faiss_index import FaissIndex
from densekd.index.shards import ShardSpec, finalize_encoding, publish_manifest, resolve_shards, shard_group

__all__ = ["EmbeddingStore", "PassageEncoder", "corpus_digest", "encode_corpus", "finalize_encoding"]

FORMAT = "densekd.embeddings/1"
MANIFEST = "manifest.json"
STATE = "encode_state.json"
KEY_FIELDS = ("format", "fingerprint", "corpus_digest", "n", "chunk_size")


class PassageEncoder(Protocol):
    """What :func:`encode_corpus` needs from an encoder."""

    def encode_passages(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray: ...


def corpus_digest(passages: Sequence[Passage]) -> str:
    """A BLAKE2 hash of every passage's id and :meth:`~Passage.full_text`, in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in passages:
        # NUL separators: no id/text split can make two different corpora hash the same.
        h.update(p.id.encode("utf-8") + b"\0" + p.full_text().encode("utf-8") + b"\0")
    return h.hexdigest()


def _chunk_names(i: int) -> tuple[str, str]:
    return f"emb_{i:05d}.npy", f"ids_{i:05d}.npy"


def encode_corpus(encoder: PassageEncoder, corpus: Corpus | Sequence[Passage], out_dir: str | os.PathLike,
                  batch_size: int = 64, chunk_size: int = 4096, show_progress: bool = True,
                  fingerprint: str = "", num_shards: int | None = 1,
                  shard_index: int | None = 0) -> EmbeddingStore | None:
    """Encode ``corpus`` into ``out_dir`` (format in the module docstring) and return the store.

    Parameters
    ----------
    encoder
        Has ``encode_passages(texts, batch_size, show_progress) -> np.float32[N, H]``.
    corpus
        A :data:`Corpus` or a sequence of :class:`Passage`; the order fixes the chunks.
    out_dir
        Output folder; reused on a rerun (resume, or no work when complete under the same key).
    batch_size
        Passed to the encoder.
    chunk_size
        Passages per file; a killed run loses at most one chunk of work.
    show_progress
        Show a progress bar over passages.
    fingerprint
        Describes the model and settings; a different value re-encodes everything.
    num_shards, shard_index
        Encode only chunks ``i`` with ``i % num_shards == shard_index`` (see "Sharding" in the
        module docstring). Both ``None``: taken from torchrun / ``torch.distributed``
        (:func:`~densekd.index.shards.resolve_shards`). The default is one shard on purpose: code
        that happens to run under torchrun (e.g. an evaluation on rank 0 only) must not start
        waiting for ranks that never call this function.

    Returns
    -------
    EmbeddingStore or None
        The store; with several shards only in the process that finished the folder (rank 0 under
        a process group; otherwise the shard that wrote ``manifest.json``, or shard 0 when the folder
        was already complete), ``None`` in the others.
    """
    passages = _passages(corpus)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spec = resolve_shards(num_shards, shard_index)
    out = Path(out_dir)
    key = {"format": FORMAT, "fingerprint": fingerprint, "corpus_digest": corpus_digest(passages),
           "n": len(passages), "chunk_size": chunk_size}
    leader = spec.index == 0
    with shard_group(spec) as sync:
        if _complete(out, key):
            return EmbeddingStore.load(out) if leader else None
        # Under a process group the leader resets a stale folder before any other rank looks at it.
        done = sync.step(lambda: _prepare(out, key, spec) if leader else False)
        if not leader:
            done = _prepare(out, key, spec)
        if done:  # another process finished the folder meanwhile
            return EmbeddingStore.load(out) if leader else None
        sync.step(lambda: _encode_shard(encoder, passages, out, chunk_size, batch_size, spec, show_progress))
        if spec.grouped and not leader:
            return None  # the step above was the barrier: rank 0 now finds every chunk and finishes
        sole = spec.num_shards == 1 or spec.grouped
        # Independent shards: whoever finds every chunk present finalizes; of several finishing at
        # once exactly one publishes the manifest and gets the store.
        published = publish_manifest(out, passages, key["corpus_digest"], wait=not sole)
        return EmbeddingStore.load(out) if published or sole else None


def _passages(corpus: Corpus | Sequence[Passage]) -> list[Passage]:
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if not passages:
        raise ValueError("cannot encode an empty corpus")
    if len({p.id for p in passages}) != len(passages):
        raise ValueError("duplicate passage ids in the corpus")
    return passages


def _complete(out: Path, key: dict[str, Any]) -> bool:
    """Whether ``out`` holds a finished encoding under ``key``."""
    return (out / MANIFEST).is_file() and same_key(read_json_file(out / MANIFEST), key, KEY_FIELDS)


def _encode_shard(encoder: PassageEncoder, passages: list[Passage], out: Path, chunk_size: int, batch_size: int,
                  spec: ShardSpec, show_progress: bool) -> None:
    """Encode the chunks of ``spec`` that an earlier run of the same key has not left complete."""
    own = [i for i in range(_num_chunks(len(passages), chunk_size)) if spec.owns(i)]
    total = sum(len(passages[i * chunk_size:(i + 1) * chunk_size]) for i in own)
    desc = "encode corpus" if spec.num_shards == 1 else f"encode corpus (shard {spec.index}/{spec.num_shards})"
    with tqdm(total=total, desc=desc, unit="psg", disable=not show_progress) as bar:
        for i in own:
            part = passages[i * chunk_size:(i + 1) * chunk_size]
            if _existing_chunk(out, i, [p.id for p in part]) is None:
                _encode_chunk(encoder, part, batch_size, out, i)
            bar.update(len(part))


def _num_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def _prepare(out: Path, key: dict[str, Any], spec: ShardSpec) -> bool:
    """Make ``out`` ready for (re)encoding under ``key``: keep chunks only when resuming that key.

    Returns ``True`` when another process completed the folder under ``key`` meanwhile.
    """
    out.mkdir(parents=True, exist_ok=True)
    _clear_temporaries(out, spec)
    state = out / STATE
    if state.is_file():
        try:
            if same_key(read_json_file(state), key, KEY_FIELDS):
                return False
        except DataFormatError:
            pass  # an unreadable state file is treated like a different key: start over
    # A finishing shard writes the manifest before it deletes the state file, so a state file found
    # missing here may mean "finished just now" rather than "never started".
    if _complete(out, key):
        return True
    # The old manifest goes first: if we die while chunks are replaced, no stale manifest may claim
    # the folder is complete.
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in [*out.glob("emb_*.npy"), *out.glob("ids_*.npy")]:
        stale.unlink(missing_ok=True)  # an independent shard may be resetting the same folder
    write_json(state, key)
    return False


_CHUNK_TMP = re.compile(r"\.(?:emb|ids)_(\d+)\.npy\..*\.tmp")


def _clear_temporaries(out: Path, spec: ShardSpec) -> None:
    """Delete temporary files that a killed writer left (atomic_path names them ".<target>.*.tmp").

    Running alone (one shard, or the leader of a group before the others start) clears them all;
    an independent shard only those of its own chunks, because another shard may be writing its own
    right now.
    """
    alone = spec.num_shards == 1 or (spec.grouped and spec.index == 0)
    for leftover in out.glob(".*.tmp"):
        match = _CHUNK_TMP.fullmatch(leftover.name)
        if match is not None and (alone or spec.owns(int(match.group(1)))):
            leftover.unlink(missing_ok=True)
        # "..manifest.json.*": write_json's own temporary inside publish_once's temporary file
        elif alone and leftover.name.startswith((f".{MANIFEST}.", f"..{MANIFEST}.", f".{STATE}.")):
            leftover.unlink(missing_ok=True)


def _existing_chunk(out: Path, i: int, ids: list[str]) -> np.ndarray | None:
    """A chunk finished by an earlier run of the same key, or ``None`` when it must be (re)encoded."""
    emb_path, ids_path = (out / name for name in _chunk_names(i))
    if not (emb_path.is_file() and ids_path.is_file()):
        return None
    try:
        if load_ids(ids_path) != ids:
            return None
        emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    except (DataFormatError, ValueError, OSError):
        return None
    ok = emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[0] == len(ids)
    return emb if ok else None


def _encode_chunk(encoder: PassageEncoder, part: list[Passage], batch_size: int, out: Path, i: int) -> np.ndarray:
    """Encode one slice and write it: embeddings first, ids second (a chunk counts once both exist)."""
    texts = [p.full_text() for p in part]
    # The outer bar already tracks passages; a nested per-chunk bar would only add noise.
    emb = np.asarray(encoder.encode_passages(texts, batch_size=batch_size, show_progress=False))
    if emb.ndim != 2 or emb.shape[0] != len(texts) or not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"encoder returned {emb.dtype} {emb.shape} for {len(texts)} passages; expected float [N, H]")
    emb = emb.astype(np.float32, copy=False)
    if not np.isfinite(emb).all():
        raise ValueError(f"encoder returned NaN/inf embeddings in chunk {i}")
    emb_name, ids_name = _chunk_names(i)
    save_npy(out / emb_name, emb)
    save_ids(out / ids_name, [p.id for p in part])
    return emb


class EmbeddingStore:
    """Read access to a completed :func:`encode_corpus` folder.

    Attributes
    ----------
    path
        The folder.
    ids
        All passage ids in corpus order (row ``i`` of :attr:`embeddings`).
    dim
        Embedding width ``H``.
    fingerprint
        The model description the store was encoded under.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], ids: list[str], chunk_sizes: list[int]):
        self.path, self.manifest, self.ids = path, manifest, ids
        self.dim: int = manifest["dim"]
        self.fingerprint: str = manifest["fingerprint"]
        self._chunks = [(path / c["emb"], n) for c, n in zip(manifest["chunks"], chunk_sizes)]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Open a folder written by :func:`encode_corpus`, checking every chunk against the manifest.

        Raises
        ------
        DataFormatError
            Naming the file: no ``manifest.json`` (encoding did not finish), a missing chunk, or a
            chunk whose shape, dtype or id count disagrees with the manifest.
        """
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DataFormatError(mpath, "missing: the encoding did not finish (rerun encode_corpus to resume)")
        manifest = read_json_file(mpath)
        require_keys(manifest, {"format": str, "fingerprint": str, "n": int, "dim": int, "chunks": list}, mpath)
        if manifest["format"] != FORMAT:
            raise DataFormatError(mpath, f"unsupported format {manifest['format']!r} (expected {FORMAT!r})")
        ids: list[str] = []
        sizes = [cls._check_chunk(root, c, manifest["dim"], mpath, ids) for c in manifest["chunks"]]
        if len(ids) != manifest["n"]:
            raise DataFormatError(mpath, f"chunks hold {len(ids)} passages, manifest says {manifest['n']}")
        return cls(root, manifest, ids, sizes)

    @staticmethod
    def _check_chunk(root: Path, chunk: Any, dim: int, mpath: Path, ids: list[str]) -> int:
        if not isinstance(chunk, dict):
            raise DataFormatError(mpath, "each entry of 'chunks' must be an object")
        require_keys(chunk, {"emb": str, "ids": str, "n": int}, mpath)
        chunk_ids = load_ids(root / chunk["ids"])
        emb_path = require_file(root / chunk["emb"])
        try:
            emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataFormatError(emb_path, f"not a readable .npy array ({e})") from None
        want = (chunk["n"], dim)
        if emb.dtype != np.float32 or emb.shape != want or len(chunk_ids) != chunk["n"]:
            raise DataFormatError(emb_path, f"expected float32 {want} with {chunk['n']} ids, "
                                            f"got {emb.dtype} {emb.shape} with {len(chunk_ids)} ids")
        ids.extend(chunk_ids)
        return chunk["n"]

    def iter_chunks(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, emb[n_i, dim])`` per chunk; ``emb`` is a read-only memory map."""
        start = 0
        for emb_path, n in self._chunks:
            yield self.ids[start:start + n], np.load(emb_path, mmap_mode="r", allow_pickle=False)
            start += n

    @property
    def embeddings(self) -> np.ndarray:
        """All embeddings ``[n, dim]`` float32: a memory map for one chunk, else an in-RAM copy."""
        maps = [emb for _, emb in self.iter_chunks()]
        return maps[0] if len(maps) == 1 else np.concatenate(maps)

    def sample(self, size: int, seed: int = 0) -> np.ndarray:
        """``min(size, n)`` rows drawn uniformly without replacement (seeded), as float32 ``[m, dim]``."""
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=min(size, len(self)), replace=False))
        parts, start = [], 0
        for _, emb in self.iter_chunks():
            # Gather chunk by chunk so only the sampled rows are ever read from disk.
            sel = rows[(rows >= start) & (rows < start + len(emb))] - start
            parts.append(np.asarray(emb[sel]))
            start += len(emb)
        return np.concatenate(parts)

    def to_faiss(self, factory: str = "Flat", metric: str = "ip", train_size: int = 100_000, seed: int = 0,
                 show_progress: bool = True) -> FaissIndex:
        """Build a :class:`FaissIndex`, training IVF/PQ factories on a ``train_size`` sample first.

        Vectors are added chunk by chunk, so peak extra memory is one chunk plus the index itself.
        """
        index = FaissIndex(self.dim, factory, metric)
        if not index.is_trained:
            index.train(self.sample(train_size, seed))
        for ids, emb in tqdm(self.iter_chunks(), total=len(self._chunks), desc="faiss add",
                             disable=not show_progress or len(self._chunks) < 2):
            index.add(ids, np.ascontiguousarray(emb))
        return index
