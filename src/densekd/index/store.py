"""The dense embedding store: its on-disk format, reading it, and the manifest that finishes it.

:func:`densekd.index.encode.encode_corpus` writes a store (through the
:class:`~densekd.index.chunks.ChunkWriter`); this module owns the format, :class:`EmbeddingStore`
reads it, and :func:`publish_manifest` / :func:`finalize_encoding` verify every chunk and write the
manifest that marks it complete.

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
same key, :func:`~densekd.index.encode.encode_corpus` encodes nothing and just loads the store.

Finalisation
------------
:func:`publish_manifest` checks every chunk against the state file's key (ids in corpus order,
dtype, shape) and publishes ``manifest.json`` in one atomic step that exactly one of several
simultaneous finishers wins (:func:`~densekd.index._storage.publish_once`).
:func:`finalize_encoding` is its public, idempotent form (an explicit merge of shards).

Memory
------
:meth:`EmbeddingStore.iter_chunks` yields read-only memory maps (``np.load(mmap_mode="r")``): the
OS pages rows in as they are read, so streaming over a store larger than RAM is fine.
:attr:`EmbeddingStore.embeddings` is a memory map only when the store has one chunk; with several it
concatenates them, which reads everything into RAM (``n * dim * 4`` bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, require_file
from densekd.data.types import Corpus, Passage
from densekd.index._storage import load_ids, read_json_file, require_keys
from densekd.index.chunks import IDS, ChunkWriter, corpus_digest
from densekd.index.faiss_index import FaissIndex
from densekd.index.shards import ShardSpec

__all__ = ["EMB", "FORMAT", "KEY_FIELDS", "MANIFEST", "STATE", "EmbeddingStore", "corpus_passages",
           "finalize_encoding", "publish_manifest", "store_key", "store_writer"]

FORMAT = "densekd.embeddings/1"
MANIFEST = "manifest.json"
STATE = "encode_state.json"
KEY_FIELDS = ("format", "fingerprint", "corpus_digest", "n", "chunk_size")
EMB = "emb"


def store_key(fingerprint: str, passages: Sequence[Passage], chunk_size: int) -> dict[str, Any]:
    """The cache key of an encoding of ``passages`` (module docstring); its field order is the manifest's."""
    return {"format": FORMAT, "fingerprint": fingerprint, "corpus_digest": corpus_digest(passages),
            "n": len(passages), "chunk_size": chunk_size}


def store_writer(out: Path, key: dict[str, Any], spec: ShardSpec | None = None) -> ChunkWriter:
    """The :class:`ChunkWriter` of a dense store folder (chunks ``emb_*.npy`` + ``ids_*.npy``)."""
    return ChunkWriter(out, key, KEY_FIELDS, (EMB,), state=STATE, manifest=MANIFEST, spec=spec)


def corpus_passages(corpus: Corpus | Sequence[Passage]) -> list[Passage]:
    """``corpus`` as a list in its order; an empty corpus or a repeated id is a ``ValueError``."""
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if not passages:
        raise ValueError("cannot encode an empty corpus")
    if len({p.id for p in passages}) != len(passages):
        raise ValueError("duplicate passage ids in the corpus")
    return passages


class EmbeddingStore:
    """Read access to a completed :func:`~densekd.index.encode.encode_corpus` folder.

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
        """Open a folder written by :func:`~densekd.index.encode.encode_corpus`, checking every chunk.

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


def finalize_encoding(out_dir: str | os.PathLike, corpus: Corpus | Sequence[Passage] | None = None) -> EmbeddingStore:
    """Check every chunk of a (sharded) encoding, write ``manifest.json`` and return the store.

    Idempotent and safe to call from several processes at once (the manifest is published with one
    atomic step and its content is deterministic). :func:`~densekd.index.encode.encode_corpus` calls
    it itself; call it explicitly to merge shards that ran as separate jobs.

    Parameters
    ----------
    out_dir
        The folder all shards wrote to.
    corpus
        When given, every chunk's ids must be that corpus slice in order and the folder's
        ``corpus_digest`` must match; without it the ids are checked for count and uniqueness only.

    Raises
    ------
    DataFormatError
        Naming ``out_dir`` when a chunk is missing (the error lists them) or nothing was encoded
        there, or naming the file of a chunk whose ids, dtype or shape are wrong.
    """
    out = Path(out_dir)
    passages = None if corpus is None else corpus_passages(corpus)
    digest = None if passages is None else corpus_digest(passages)
    publish_manifest(out, passages, digest, wait=False)
    store = EmbeddingStore.load(out)
    if digest is not None and store.manifest.get("corpus_digest") != digest:
        raise DataFormatError(out / MANIFEST, "was encoded from a different corpus (corpus_digest differs)")
    return store


def publish_manifest(out: Path, passages: list[Passage] | None, digest: str | None, wait: bool) -> bool:
    """Verify every chunk of ``out`` against its state file's key and publish ``manifest.json``.

    Returns ``True`` when this call wrote the manifest, ``False`` when it was already there (another
    process finished first) or, with ``wait``, when chunks are still missing (other shards at work).
    """
    state, manifest = out / STATE, out / MANIFEST
    try:
        key = read_json_file(state)
    except DataFormatError:
        if state.exists():
            raise
        if manifest.is_file():
            return False  # finished earlier, possibly a moment ago by another shard
        raise DataFormatError(out, f"nothing to finalize: no {STATE} or {MANIFEST} "
                                   "(run encode_corpus first)") from None
    require_keys(key, {"format": str, "fingerprint": str, "corpus_digest": str, "n": int, "chunk_size": int}, state)
    if key["format"] != FORMAT:
        raise DataFormatError(state, f"unsupported format {key['format']!r} (expected {FORMAT!r})")
    if digest is not None and key["corpus_digest"] != digest:
        raise DataFormatError(state, "was written for a different corpus (corpus_digest differs)")
    writer = store_writer(out, key)
    n, size = key["n"], key["chunk_size"]
    count = -(-n // size)
    missing = [i for i in range(count) if not all((out / name).is_file() for name in writer.names(i).values())]
    if missing:
        if wait:
            return False
        listed = ", ".join(f"{i:05d}" for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise DataFormatError(out, f"incomplete encoding: {len(missing)} of {count} chunks missing ({listed}); "
                                   "run the missing shards with the same settings, then finalize")
    chunks = [{**writer.names(i), "n": min(size, n - i * size)} for i in range(count)]  # "emb", "ids", "n"
    try:
        dim = int(np.load(out / chunks[0][EMB], mmap_mode="r", allow_pickle=False).shape[-1])
    except (ValueError, OSError, IndexError):
        dim = -1  # unreadable: the check below names the file
    ids: list[str] = []
    seen: set[str] = set()  # without the corpus, ids can still be checked for duplicates
    for i, chunk in enumerate(chunks):
        EmbeddingStore._check_chunk(out, chunk, dim, state, ids)  # shape, dtype, id count
        start, new = i * size, ids[i * size:]
        if passages is not None and new != [p.id for p in passages[start:start + chunk["n"]]]:
            raise DataFormatError(out / chunk[IDS], f"expected the ids of corpus rows {start}.."
                                                      f"{start + chunk['n'] - 1}, in corpus order")
        if passages is None and not seen.isdisjoint(new):
            raise DataFormatError(out / chunk[IDS], f"ids already in an earlier chunk, e.g. "
                                                      f"{sorted(seen.intersection(new))[0]!r}")
        seen.update(new if passages is None else ())
    return writer.finish({**{f: key[f] for f in KEY_FIELDS}, "dim": dim, "chunks": chunks})
