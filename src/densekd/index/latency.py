"""Per-query latency at batch 1: time each query's full search path and report percentiles.

``timed_search(search_one, queries)`` calls ``search_one(qid, text) -> dict[pid, score]`` once per
query (after a few untimed warm-up calls, which absorb lazy initialisation such as thread pools and
memory arenas) and returns the run it built together with :func:`latency_summary` of the
per-query wall-clock times. What ``search_one`` includes is the caller's definition of a query; for
dense search it is encoding + FAISS, for the hybrid BM25 + encoding + FAISS + fusion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from densekd.data.types import Run

__all__ = ["latency_summary", "timed_search"]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p95", "mean", "max"}`` in milliseconds, plus ``"n"`` (number of timings)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"n": int(ms.size), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "mean": float(ms.mean()), "max": float(ms.max())}


def timed_search(search_one: Callable[[str, str], Mapping[str, float]], queries: Mapping[str, str],
                 warmup: int = 5) -> tuple[Run, dict[str, float]]:
    """Search every query alone (batch 1) and time it.

    Parameters
    ----------
    search_one
        ``(qid, text) -> {pid: score}`` for one query.
    queries
        ``qid -> text``.
    warmup
        Untimed calls on the first queries before timing starts (their results are recomputed).

    Returns
    -------
    tuple[Run, dict[str, float]]
        The run over all queries and :func:`latency_summary` of the per-query times.
    """
    items = list(queries.items())
    for qid, text in items[:warmup]:
        search_one(qid, text)
    run: Run = {}
    times = []
    for qid, text in items:
        t0 = time.perf_counter()
        docs = search_one(qid, text)
        times.append(time.perf_counter() - t0)
        run[qid] = dict(docs)
    return run, latency_summary(times)
