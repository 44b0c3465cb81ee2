"""Fuse several rankings of the same queries (e.g. BM25 + dense) into one :data:`Run`.

Methods (per query; ``w_i`` is run ``i``'s weight)
-------------------------------------------------
* ``"rrf"``: reciprocal rank fusion, ``sum_i w_i / (rrf_k + rank_i(d))`` with 1-based ranks (ties
  broken by doc id, as in :func:`densekd.data.types.top_k`); a document absent from run ``i``
  gets nothing from it. Scale-free, the robust default.
* ``"zscore"``: ``sum_i w_i * (s_i(d) - mean_i) / std_i``; a document absent from run ``i`` gets that
  run's lowest z-score for the query (it ranked below everything the run returned).
* ``"minmax"``: ``sum_i w_i * (s_i(d) - min_i) / (max_i - min_i)``; an absent document gets 0.

A run whose scores for a query are all equal (ties, or a single document: e.g. BM25 when one passage
holds the query's only matching term) orders its documents only against the absent ones: minmax gives
them 1 and absent documents 0, but zscore gives both 0, so under zscore such a run adds nothing to the
query (use rrf or minmax where that matters). A run with no entry for a query adds nothing.

Example
-------
>>> bm25 = {"q": {"d1": 12.0, "d2": 7.0}}
>>> dense = {"q": {"d2": 0.8, "d3": 0.7}}
>>> list(fuse([bm25, dense], method="rrf")["q"])
['d2', 'd1', 'd3']
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from densekd.data.types import Run, top_k
from densekd.scores import zscore

__all__ = ["FUSION_METHODS", "fuse"]

FUSION_METHODS = ("rrf", "zscore", "minmax")


def _normalize(scores: dict[str, float], method: str, rrf_k: float) -> tuple[dict[str, float], float]:
    """One run's scores for one query on the fusion scale, plus the value for absent documents."""
    if method == "rrf":
        ranked = top_k(scores, len(scores))
        return {doc: 1.0 / (rrf_k + rank) for rank, (doc, _) in enumerate(ranked, start=1)}, 0.0
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    if method == "zscore":
        # min_std=0 keeps fuse()'s numbers: only an exactly-zero std maps to zeros. A constant run whose
        # mean is inexact (std ~1e-17) thus gets rounding-noise z-scores, not the zeros the module doc
        # promises; the default min_std would fix that but change fused scores of existing runs.
        z = zscore(values, min_std=0.0)
        return dict(zip(scores, z.tolist())), float(z.min())
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.ones_like(values)
    return dict(zip(scores, scaled.tolist())), 0.0


def _check_args(runs: Sequence[Run], weights: Sequence[float], method: str, k: int, rrf_k: float) -> None:
    if not runs:
        raise ValueError("fuse() needs at least one run")
    if method not in FUSION_METHODS:
        raise ValueError(f"method must be one of {FUSION_METHODS}, got {method!r}")
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")


def fuse(runs: Sequence[Run], weights: Sequence[float] | None = None, method: str = "rrf", k: int = 100,
         rrf_k: float = 60) -> Run:
    """Combine ``runs`` into one ranking per query (method definitions in the module docstring).

    Parameters
    ----------
    runs
        Runs over the same corpus; a query may be missing from some of them.
    weights
        One non-negative weight per run (default: all 1).
    method
        ``"rrf"``, ``"zscore"`` or ``"minmax"``.
    k
        Documents kept per query after fusion (ties broken by doc id).
    rrf_k
        The RRF rank offset (60 in Cormack et al., 2009); damps the weight of top ranks.

    Returns
    -------
    Run
        Every query of any input run, with the top ``k`` fused scores.
    """
    weights = [1.0] * len(runs) if weights is None else [float(w) for w in weights]
    _check_args(runs, weights, method, k, rrf_k)
    qids = list(dict.fromkeys(qid for run in runs for qid in run))
    fused: Run = {}
    for qid in qids:
        per_run = [(run.get(qid) or {}, w) for run, w in zip(runs, weights)]
        docs = dict.fromkeys(doc for scores, _ in per_run for doc in scores)
        totals = dict.fromkeys(docs, 0.0)
        for scores, w in per_run:
            if not scores:
                continue
            norm, floor = _normalize(scores, method, rrf_k)
            for doc in totals:
                totals[doc] += w * norm.get(doc, floor)
        fused[qid] = dict(top_k(totals, k))
    return fused
