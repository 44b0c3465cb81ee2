"""One call from an encoder and a corpus to a dense-retrieval :data:`Run`.

The encoder needs ``encode_passages(texts, batch_size, show_progress)`` and
``encode_queries(texts, batch_size, show_progress)``, both returning float32 ``[N, H]``; scores are
the index metric (inner product by default, i.e. cosine for a normalising encoder).

With ``cache_dir`` the corpus embeddings go through :func:`densekd.index.encode.encode_corpus`
(chunked, resumable, reused while the fingerprint and corpus are unchanged); the faiss index itself
is rebuilt on each call, which is cheap next to encoding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from densekd.data.hashing import weights_digest
from densekd.data.types import Corpus, Passage, Queries, Query, Run
from densekd.index.encode import encode_corpus
from densekd.index.faiss_index import FaissIndex

__all__ = ["default_fingerprint", "dense_search"]


def default_fingerprint(encoder: Any) -> str:
    """Describe a torch-module encoder by its class, ``config`` and a hash of its weights.

    Hashing the weights (not the checkpoint path) means a fine-tuned model never reuses the
    embeddings of its starting point. An encoder with a ``cache_fingerprint()`` method (e.g. an
    ONNX-backed :class:`~densekd.encoders.onnx_backend.OnnxDenseEncoder`) describes itself.

    Raises
    ------
    ValueError
        For an encoder without ``state_dict`` (pass ``fingerprint=`` explicitly then).
    """
    if hasattr(encoder, "cache_fingerprint"):
        return str(encoder.cache_fingerprint())
    if not hasattr(encoder, "state_dict"):
        raise ValueError(f"cannot fingerprint a {type(encoder).__name__}: pass fingerprint= to cache its embeddings")
    weights = weights_digest([encoder.state_dict()])
    return f"{type(encoder).__name__}:{getattr(encoder, 'config', '')!r}:weights={weights}"


def _texts(queries: Queries | Mapping[str, str]) -> tuple[list[str], list[str]]:
    qids = list(queries)
    return qids, [q.text if isinstance(q, Query) else q for q in queries.values()]


def _check_emb(x: np.ndarray, n: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"encoder returned {what} embeddings of shape {x.shape} for {n} texts")
    return x.astype(np.float32, copy=False)


def dense_search(encoder: Any, corpus: Corpus | Sequence[Passage], queries: Queries | Mapping[str, str],
                 k: int = 100, cache_dir: str | os.PathLike | None = None, factory: str = "Flat",
                 batch_size: int = 64, fingerprint: str | None = None, metric: str = "ip",
                 nprobe: int | None = None, ef_search: int | None = None, show_progress: bool = True) -> Run:
    """Encode ``corpus`` and ``queries`` with ``encoder`` and retrieve the top ``k`` per query.

    Parameters
    ----------
    encoder
        A dense encoder (see the module docstring).
    corpus, queries
        What to search and what to search for (``qid -> Query`` or ``qid -> text``).
    k
        Ranking depth (clipped to the corpus size).
    cache_dir
        Folder for the corpus embeddings (resumable; reused when nothing changed).
    factory, metric, nprobe, ef_search
        Index settings, see :class:`FaissIndex`. IVF/PQ factories are trained on the corpus.
    batch_size
        Encoder batch size.
    fingerprint
        Cache key for the model; ``None`` derives one from the weights (:func:`default_fingerprint`).
    show_progress
        Show progress bars.
    """
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if cache_dir is not None:
        fp = fingerprint if fingerprint is not None else default_fingerprint(encoder)
        store = encode_corpus(encoder, passages, cache_dir, batch_size=batch_size,
                              show_progress=show_progress, fingerprint=fp)
        index = store.to_faiss(factory, metric, show_progress=show_progress)
    else:
        index = _build_in_memory(encoder, passages, factory, metric, batch_size, show_progress)
    qids, texts = _texts(queries)
    if not qids:
        return {}
    q = _check_emb(encoder.encode_queries(texts, batch_size=batch_size, show_progress=show_progress),
                   len(texts), "query")
    return index.search(q, qids, k=k, nprobe=nprobe, ef_search=ef_search, show_progress=show_progress)


def _build_in_memory(encoder: Any, passages: list[Passage], factory: str, metric: str, batch_size: int,
                     show_progress: bool) -> FaissIndex:
    texts = [p.full_text() for p in passages]
    emb = _check_emb(encoder.encode_passages(texts, batch_size=batch_size, show_progress=show_progress),
                     len(texts), "passage")
    index = FaissIndex(emb.shape[1], factory, metric)
    if not index.is_trained:
        index.train(emb)
    index.add([p.id for p in passages], emb)
    return index
