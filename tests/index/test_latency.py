"""Per-query latency helpers: percentiles are ordered and the timed run equals the per-query results."""

from __future__ import annotations

import numpy as np

from densekd.index.latency import latency_summary, timed_search


def test_latency_summary_percentiles() -> None:
    s = latency_summary([0.001 * i for i in range(1, 101)])
    assert s["n"] == 100 and s["p50"] <= s["p95"] <= s["max"] and abs(s["max"] - 100.0) < 1e-9
    assert np.isnan(latency_summary([])["p50"])


def test_timed_search_returns_every_query() -> None:
    calls: list[str] = []

    def one(qid: str, text: str) -> dict[str, float]:
        calls.append(qid)
        return {f"d-{text}": float(len(text))}

    run, lat = timed_search(one, {"q1": "ab", "q2": "abc"}, warmup=1)
    assert run == {"q1": {"d-ab": 2.0}, "q2": {"d-abc": 3.0}}
    assert lat["n"] == 2 and calls == ["q1", "q1", "q2"]  # one warm-up call, then each query once
