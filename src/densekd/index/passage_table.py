"""Passage id -> frozen vector tables, read by ``query_only`` training and dev-set evaluation.

A :class:`PassageEmbeddingTable` is the in-memory side of the stores beside it: it wraps an
:class:`~densekd.index.store.EmbeddingStore` (or any ``ids`` + ``embeddings`` pair) for lookups by
passage id. Its token-state counterpart is :class:`~densekd.index.token_states.PassageTokenStates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from densekd.encoders.dense import DenseEncoder
from densekd.index.faiss_index import FaissIndex

__all__ = ["PassageEmbeddingTable"]


class PassageEmbeddingTable:
    """Passage id -> precomputed vector, for ``query_only`` training.

    Parameters
    ----------
    ids
        Row ids: a sequence (row ``i`` = ``ids[i]``) or a ``pid -> row`` mapping.
    embeddings
        ``[N, D]`` float matrix: numpy array (memory maps stay on disk until rows are read) or tensor.
    """

    def __init__(self, ids: Sequence[str] | Mapping[str, int], embeddings: np.ndarray | Tensor):
        self.row_of = dict(ids) if isinstance(ids, Mapping) else {pid: i for i, pid in enumerate(ids)}
        if embeddings.ndim != 2:
            raise ValueError(f"passage embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
        if self.row_of and max(self.row_of.values()) >= embeddings.shape[0]:
            raise ValueError(f"ids point past the {embeddings.shape[0]} embedding rows")
        self.embeddings = embeddings

    @classmethod
    def coerce(cls, table: Any) -> PassageEmbeddingTable:
        """Accept a table, an ``(ids, matrix)`` pair or anything with ``.ids`` and ``.embeddings``."""
        if isinstance(table, cls):
            return table
        if isinstance(table, tuple) and len(table) == 2:
            return cls(*table)
        if hasattr(table, "ids") and hasattr(table, "embeddings"):  # e.g. index.store.EmbeddingStore
            return cls(table.ids, table.embeddings)
        raise TypeError(f"cannot use {type(table).__name__} as passage embeddings: pass a PassageEmbeddingTable, "
                        "an (ids, matrix) pair or an object with .ids and .embeddings")

    @classmethod
    def from_encoder(cls, encoder: DenseEncoder, texts: Mapping[str, str],
                     batch_size: int = 64) -> PassageEmbeddingTable:
        """Encode ``pid -> text`` with ``encoder``'s passage side (no progress bar)."""
        ids = list(texts)
        vectors = encoder.encode_passages([texts[pid] for pid in ids], batch_size=batch_size, show_progress=False)
        return cls(ids, vectors)

    @property
    def dim(self) -> int:
        """Vector size ``D``."""
        return int(self.embeddings.shape[1])

    def lookup(self, pids: Sequence[str], device: torch.device, dtype: torch.dtype) -> Tensor:
        """``[len(pids), D]`` vectors (no gradient) on ``device``; unknown ids raise ``KeyError``."""
        try:
            rows = [self.row_of[pid] for pid in pids]
        except KeyError as err:
            raise KeyError(f"passage {err.args[0]!r} is not in the query_only embedding table; encode every "
                           "training candidate (extra passages included) into it") from None
        if isinstance(self.embeddings, Tensor):
            vectors = self.embeddings[torch.as_tensor(rows, device=self.embeddings.device)]
        else:
            vectors = torch.from_numpy(np.ascontiguousarray(self.embeddings[rows]))
        return vectors.to(device=device, dtype=dtype)

    def to_faiss(self, factory: str = "Flat", metric: str = "ip", show_progress: bool = False) -> FaissIndex:
        """A :class:`FaissIndex` of the table's rows (the ``EmbeddingStore.to_faiss`` call, for vectors
        computed in memory, e.g. a passage head's over cached token states). Trains IVF/PQ factories on
        every row; ``show_progress`` is accepted for that signature and unused."""
        ids = sorted(self.row_of, key=self.row_of.__getitem__)
        x = np.ascontiguousarray(np.asarray(self.embeddings[[self.row_of[pid] for pid in ids]], dtype=np.float32))
        index = FaissIndex(self.dim, factory, metric)
        if not index.is_trained:
            index.train(x)
        index.add(ids, x)
        return index
