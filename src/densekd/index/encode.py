"""Encode a corpus into chunked, resumable, memory-mappable embedding files (the dense producer).

The encoder is anything with ``encode_passages(texts: list[str], batch_size: int, show_progress:
bool) -> np.float32[N, H]`` (e.g. :class:`densekd.encoders.dense.DenseEncoder`); it sees
:meth:`Passage.full_text` (title and text). The folder format, its cache key and
:class:`EmbeddingStore` are in :mod:`densekd.index.store`; chunks are written and resumed by the
shared :class:`~densekd.index.chunks.ChunkWriter`, so a killed run picks up after its last complete
chunk.

Sharding
--------
With ``num_shards=N, shard_index=k`` a process encodes only chunks ``i % N == k`` into the same
folder; chunk files are disjoint, so shards never write the same file. The cache key does not
include ``N``: any mix of shard counts, resumes and single runs yields the same files.
``manifest.json`` is written only once every chunk exists, by
:func:`~densekd.index.store.finalize_encoding`, which checks each chunk's ids against the corpus
order (and is idempotent); the result is byte-for-byte the one-process encoding. Who finalizes:
under torchrun (both ``None``; a gloo group is started when none exists) rank 0 resets a stale folder
before the others start and finalizes after a barrier; independent processes (explicit ``N``, ``k``)
each try after their own chunks, and the hard-linked manifest makes exactly one of them the
finisher. Independent shards must share one cache key; if they start together on a folder of
another key, reset races are possible: use a fresh folder. Process coordination is
:mod:`densekd.index.shards`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from densekd.data.types import Corpus, Passage
from densekd.index.chunks import ChunkWriter, corpus_digest
from densekd.index.shards import resolve_shards, shard_group
from densekd.index.store import (
    EMB, EmbeddingStore, corpus_passages, finalize_encoding, publish_manifest, store_key, store_writer,
)

# EmbeddingStore, corpus_digest and finalize_encoding are re-exported: this was their home, and
# ``densekd.index.encode`` stays the one import for encoding a corpus.
__all__ = ["EmbeddingStore", "PassageEncoder", "corpus_digest", "encode_corpus", "finalize_encoding"]


class PassageEncoder(Protocol):
    """What :func:`encode_corpus` needs from an encoder."""

    def encode_passages(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray: ...


def encode_corpus(encoder: PassageEncoder, corpus: Corpus | Sequence[Passage], out_dir: str | os.PathLike,
                  batch_size: int = 64, chunk_size: int = 4096, show_progress: bool = True,
                  fingerprint: str = "", num_shards: int | None = 1,
                  shard_index: int | None = 0) -> EmbeddingStore | None:
    """Encode ``corpus`` into ``out_dir`` (format: :mod:`densekd.index.store`) and return the store.

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
    passages = corpus_passages(corpus)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spec = resolve_shards(num_shards, shard_index)
    out = Path(out_dir)
    key = store_key(fingerprint, passages, chunk_size)
    writer = store_writer(out, key, spec)
    leader = spec.index == 0
    with shard_group(spec) as sync:
        if writer.complete():
            return EmbeddingStore.load(out) if leader else None
        # Under a process group the leader resets a stale folder before any other rank looks at it.
        done = sync.step(lambda: writer.prepare() if leader else False)
        if not leader:
            done = writer.prepare()
        if done:  # another process finished the folder meanwhile
            return EmbeddingStore.load(out) if leader else None
        sync.step(lambda: _encode_shard(encoder, passages, writer, chunk_size, batch_size, show_progress))
        if spec.grouped and not leader:
            return None  # the step above was the barrier: rank 0 now finds every chunk and finishes
        sole = spec.num_shards == 1 or spec.grouped
        # Independent shards: whoever finds every chunk present finalizes; of several finishing at
        # once exactly one publishes the manifest and gets the store.
        published = publish_manifest(out, passages, key["corpus_digest"], wait=not sole)
        return EmbeddingStore.load(out) if published or sole else None


def _encode_shard(encoder: PassageEncoder, passages: list[Passage], writer: ChunkWriter, chunk_size: int,
                  batch_size: int, show_progress: bool) -> None:
    """Encode the chunks of the writer's shard that an earlier run of the same key has not left complete."""
    spec = writer.spec
    own = [i for i in range(-(-len(passages) // chunk_size)) if spec.owns(i)]
    total = sum(len(passages[i * chunk_size:(i + 1) * chunk_size]) for i in own)
    desc = "encode corpus" if spec.num_shards == 1 else f"encode corpus (shard {spec.index}/{spec.num_shards})"
    with tqdm(total=total, desc=desc, unit="psg", disable=not show_progress) as bar:
        for i in own:
            part = passages[i * chunk_size:(i + 1) * chunk_size]
            ids = [p.id for p in part]
            if writer.load(i, ids, lambda a, n=len(part): _valid_chunk(a[EMB], n)) is None:
                writer.write(i, {EMB: _encode_chunk(encoder, part, batch_size, i)}, ids)
            bar.update(len(part))


def _valid_chunk(emb: np.ndarray, n: int) -> bool:
    return emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[0] == n


def _encode_chunk(encoder: PassageEncoder, part: list[Passage], batch_size: int, i: int) -> np.ndarray:
    """Embeddings ``float32[len(part), H]`` of one slice, checked (shape, finite values)."""
    texts = [p.full_text() for p in part]
    # The outer bar already tracks passages; a nested per-chunk bar would only add noise.
    emb = np.asarray(encoder.encode_passages(texts, batch_size=batch_size, show_progress=False))
    if emb.ndim != 2 or emb.shape[0] != len(texts) or not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"encoder returned {emb.dtype} {emb.shape} for {len(texts)} passages; expected float [N, H]")
    emb = emb.astype(np.float32, copy=False)
    if not np.isfinite(emb).all():
        raise ValueError(f"encoder returned NaN/inf embeddings in chunk {i}")
    return emb
