"""FAISS vector index with string passage ids, built from an ``index_factory`` string.

Faiss stores vectors under positional ids ``0..ntotal-1``; the string ids live beside it in a numpy
array (no ``IndexIDMap``, no pickle), so the same map works for every factory.

Scores
------
``metric="ip"``: inner product (cosine for normalised vectors). ``metric="l2"``: the *negated*
squared L2 distance, so that, as everywhere in densekd, a higher score is better.

On-disk format (a folder, written atomically: built under a temporary name, then renamed)
------------------------------------------------------------------------------------------
* ``index.faiss``: ``faiss.write_index`` output;
* ``ids.npy``: 1-D unicode array, row ``i`` = faiss id ``i`` (length = ``index.ntotal``);
* ``meta.json``: ``{"factory": str, "metric": "ip"|"l2", "dim": int, "count": int}``.

Example
-------
>>> import numpy as np
>>> index = FaissIndex(dim=2)
>>> index.add(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32))
>>> index.search(np.array([[0.5, 0.25]], dtype=np.float32), ["q"], k=2)
{'q': {'a': 0.5, 'b': 0.25}}
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, require_file, write_json
from densekd.data.types import Run
from densekd.index._storage import atomic_dir, load_ids, read_json_file, require_keys, save_ids

__all__ = ["FaissIndex"]

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "meta.json"
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# Queries are searched in blocks so that the [block, k] result buffers stay small for big query sets.
SEARCH_BLOCK = 4096


def check_vectors(x: np.ndarray, dim: int, name: str = "x") -> np.ndarray:
    """Validate a float32 ``[N, dim]`` matrix of finite values; return it C-contiguous.

    Raises
    ------
    ValueError
        On a wrong type, dtype, rank, width or a NaN/inf entry; the message gives the shapes.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype} (shape {x.shape})")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape [N, {dim}], got {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} (shape {x.shape}) has {bad} rows with NaN or inf")
    return np.ascontiguousarray(x)


class FaissIndex:
    """String-id wrapper around a faiss index.

    Parameters
    ----------
    dim
        Vector width ``D``.
    factory
        A ``faiss.index_factory`` description: ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
        ``"IVF256,PQ32"``, ``"OPQ16,IVF256,PQ16"``, ...
    metric
        ``"ip"`` (inner product) or ``"l2"``.
    """

    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.factory, self.metric = int(dim), factory, metric
        try:
            self.index = faiss.index_factory(self.dim, factory, METRICS[metric])
        except RuntimeError as e:
            raise ValueError(f"invalid faiss factory string {factory!r}: {e}") from None
        self.ids: list[str] = []
        self._id_set: set[str] = set()

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        """False for IVF/PQ indexes until :meth:`train` has run; always True for Flat and HNSW."""
        return bool(self.index.is_trained)

    def train(self, x: np.ndarray) -> None:
        """Train the coarse quantiser / codebooks on a representative sample ``x[N, D]`` (float32).

        Faiss itself subsamples (``max_points_per_centroid``), so passing far more rows than
        ``~256 * nlist`` only costs memory; :meth:`EmbeddingStore.to_faiss` draws the sample.
        """
        x = check_vectors(x, self.dim)
        if self.index.ntotal:
            raise RuntimeError("train() must run before any vector is added")
        self.index.train(x)

    def add(self, ids: Sequence[str], x: np.ndarray) -> None:
        """Append vectors ``x[N, D]`` (float32) under string ``ids`` (may be called chunk by chunk).

        Raises
        ------
        ValueError
            On a length mismatch, a bad matrix (see :func:`check_vectors`) or a duplicate id, within
            ``ids`` or against ids already added.
        RuntimeError
            When the index still needs training.
        """
        x = check_vectors(x, self.dim)
        ids = [str(i) for i in ids]
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} ids for {x.shape[0]} vectors (shape {x.shape})")
        fresh = set(ids)
        if len(fresh) != len(ids) or not fresh.isdisjoint(self._id_set):
            repeated = {i for i, n in Counter(ids).items() if n > 1} | (fresh & self._id_set)
            dupes = sorted(repeated)[:3]
            raise ValueError(f"duplicate passage ids, e.g. {dupes}")
        if not self.is_trained:
            raise RuntimeError(f"the {self.factory!r} index must be trained before add(): call .train(x)")
        self.index.add(x)
        self.ids.extend(ids)
        self._id_set |= fresh

    def search_arrays(self, q: np.ndarray, k: int = 100, nprobe: int | None = None,
                      ef_search: int | None = None, k_factor: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Search queries ``q[Nq, D]`` (float32).

        Returns
        -------
        scores : np.ndarray
            float32 ``[Nq, k']`` with ``k' = min(k, len(index))``, best first (higher = better).
        ids : list[list[str]]
            The hits' passage ids, ``ids[i][j]`` scored ``scores[i, j]``. Approximate indexes may
            find fewer than ``k'`` hits: the list is then shorter and the trailing scores are -inf.
        """
        q = check_vectors(q, self.dim, "q")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        with self._search_params(nprobe, ef_search, k_factor):
            if k == 0:
                return np.zeros((q.shape[0], 0), dtype=np.float32), [[] for _ in range(q.shape[0])]
            dist, pos = self.index.search(q, k)
        scores = -dist if self.metric == "l2" else dist
        scores[pos < 0] = -np.inf
        ids = [[self.ids[j] for j in row if j >= 0] for row in pos]
        return scores, ids

    def search(self, q: np.ndarray, qids: Sequence[str], k: int = 100, nprobe: int | None = None,
               ef_search: int | None = None, show_progress: bool = False, k_factor: int | None = None) -> Run:
        """Search queries ``q[Nq, D]`` and return a :data:`Run` keyed by ``qids`` (length ``Nq``).

        Parameters
        ----------
        nprobe
            IVF lists visited per query (``None`` keeps the index's value; faiss defaults to 1).
        ef_search
            HNSW search breadth (``None`` keeps the index's value; faiss defaults to 16).
        k_factor
            Refining indexes (factory ending in ``,RFlat`` / ``,Refine(...)``): the coarse index
            returns ``k * k_factor`` candidates that are rescored exactly (faiss defaults to 1).
        """
        if len(qids) != len(q):
            raise ValueError(f"{len(qids)} qids for {len(q)} query vectors")
        run: Run = {}
        starts = range(0, len(q), SEARCH_BLOCK)
        for start in tqdm(starts, desc="faiss search", disable=not show_progress or len(starts) < 2):
            block_ids = qids[start:start + SEARCH_BLOCK]
            scores, hits = self.search_arrays(q[start:start + SEARCH_BLOCK], k, nprobe, ef_search, k_factor)
            for qid, row, pids in zip(block_ids, scores, hits):
                run[str(qid)] = {pid: float(s) for pid, s in zip(pids, row)}
        return run

    @contextlib.contextmanager
    def _search_params(self, nprobe: int | None, ef_search: int | None,
                       k_factor: int | None = None) -> Iterator[None]:
        """Temporarily set ``nprobe`` / ``efSearch`` / ``k_factor``, restoring them so a search has no
        side effect."""
        saved: list[tuple[object, str, int]] = []
        try:
            if nprobe is not None:
                saved.append(self._set(self._ivf(), "nprobe", nprobe))
            if ef_search is not None:
                saved.append(self._set(self._hnsw(), "efSearch", ef_search))
            if k_factor is not None:
                saved.append(self._set(self._refine(), "k_factor", k_factor))
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)

    @staticmethod
    def _set(obj: object, name: str, value: int) -> tuple[object, str, int]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        old = getattr(obj, name)
        setattr(obj, name, int(value))
        return obj, name, old

    def _ivf(self) -> object:
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            raise ValueError(f"nprobe applies to IVF indexes, not {self.factory!r}") from None

    def _refine(self) -> object:
        index = faiss.downcast_index(self.index)
        if not isinstance(index, faiss.IndexRefine):
            raise ValueError(f"k_factor applies to refining indexes (',RFlat'), not {self.factory!r}")
        return index

    def _hnsw(self) -> object:
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        if not hasattr(index, "hnsw"):
            raise ValueError(f"ef_search applies to HNSW indexes, not {self.factory!r}")
        return index.hnsw

    def save(self, path: str | os.PathLike) -> None:
        """Write ``index.faiss``, ``ids.npy`` and ``meta.json`` into folder ``path`` (atomically)."""
        meta = {"factory": self.factory, "metric": self.metric, "dim": self.dim, "count": len(self)}
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            save_ids(tmp / IDS_FILE, self.ids)
            write_json(tmp / META_FILE, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaissIndex:
        """Load a folder written by :meth:`save`, checking the three files agree.

        Raises
        ------
        DataFormatError
            Naming the file: a missing or unreadable file, an id map whose length differs from
            ``index.ntotal``, or ``meta.json`` disagreeing with the index.
        """
        root = Path(path)
        meta_path, index_path, ids_path = root / META_FILE, root / INDEX_FILE, root / IDS_FILE
        meta = read_json_file(meta_path)
        require_keys(meta, {"factory": str, "metric": str, "dim": int, "count": int}, meta_path)
        if meta["metric"] not in METRICS:
            raise DataFormatError(meta_path, f"unknown metric {meta['metric']!r}")
        require_file(index_path)
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise DataFormatError(index_path, f"cannot read faiss index ({str(e).splitlines()[-1]})") from None
        ids = load_ids(ids_path)
        if len(ids) != index.ntotal:
            raise DataFormatError(ids_path, f"{len(ids)} ids for an index holding {index.ntotal} vectors")
        if index.d != meta["dim"] or index.ntotal != meta["count"] or index.metric_type != METRICS[meta["metric"]]:
            raise DataFormatError(meta_path, f"does not match {INDEX_FILE} (dim {index.d}, count {index.ntotal})")
        if len(set(ids)) != len(ids):
            raise DataFormatError(ids_path, "duplicate passage ids")
        obj = cls.__new__(cls)
        obj.dim, obj.factory, obj.metric, obj.index = index.d, meta["factory"], meta["metric"], index
        obj.ids, obj._id_set = ids, set(ids)
        return obj
