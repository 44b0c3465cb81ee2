"""Retrieval indexes: BM25 (bm25s), FAISS with string ids, chunked corpus encoding, fusion.

See each module's docstring for its on-disk format; every writer is atomic.
"""

from __future__ import annotations

from densekd.index.bm25 import BM25Index
from densekd.index.dense_search import default_fingerprint, dense_search
from densekd.index.encode import EmbeddingStore, PassageEncoder, corpus_digest, encode_corpus, finalize_encoding
from densekd.index.faiss_index import FaissIndex
from densekd.index.hybrid import FUSION_METHODS, fuse

__all__ = [
    "FUSION_METHODS",
    "BM25Index",
    "EmbeddingStore",
    "FaissIndex",
    "PassageEncoder",
    "corpus_digest",
    "default_fingerprint",
    "dense_search",
    "encode_corpus",
    "finalize_encoding",
    "fuse",
]
