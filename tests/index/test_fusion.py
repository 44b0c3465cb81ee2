"""fuse(): hand-computed RRF, z-score and min-max examples and argument checks."""

from __future__ import annotations

import pytest

from densekd.index.hybrid import fuse

A = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
B = {"q": {"d3": 10.0, "d1": 5.0}}


def test_rrf_hand_computed():
    run = fuse([A, B], method="rrf", rrf_k=60)
    # d1: ranks 1 and 2; d3: ranks 3 and 1; d2: rank 2 in A only.
    want = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62}
    assert list(run["q"]) == ["d1", "d3", "d2"]
    assert run["q"] == pytest.approx(want)


def test_rrf_weights_and_depth():
    run = fuse([A, B], weights=[1.0, 3.0], k=2)
    assert run["q"] == pytest.approx({"d3": 1 / 63 + 3 / 61, "d1": 1 / 61 + 3 / 62})


def test_zscore_hand_computed():
    run = fuse([A, B], method="zscore")
    # A: mean 2, std sqrt(2/3) -> z = +-1.2247, 0. B: mean 7.5, std 2.5 -> z = +-1; d2 is absent from B
    # and gets B's lowest z (-1).
    s = (2 / 3) ** 0.5
    want = {"d1": 1 / s - 1, "d2": 0.0 - 1, "d3": -1 / s + 1}
    assert run["q"] == pytest.approx(want)
    assert list(run["q"]) == ["d1", "d3", "d2"]


def test_minmax_hand_computed():
    run = fuse([A, B], weights=[2.0, 1.0], method="minmax")
    assert run["q"] == pytest.approx({"d1": 2 * 1.0 + 0.0, "d2": 2 * 0.5, "d3": 0.0 + 1.0})
    assert list(run["q"]) == ["d1", "d2", "d3"]  # d2 and d3 tie at 1.0: broken by doc id


def test_queries_missing_from_some_runs():
    run = fuse([A, {"other": {"x": 1.0}}, {"q": {}}])
    assert set(run) == {"q", "other"}
    assert list(run["q"]) == ["d1", "d2", "d3"] and list(run["other"]) == ["x"]


def test_single_run_keeps_order():
    assert list(fuse([A], method="zscore")["q"]) == ["d1", "d2", "d3"]


@pytest.mark.parametrize("kwargs", [
    {"method": "borda"}, {"weights": [1.0]}, {"weights": [1.0, -1.0]}, {"k": 0}, {"rrf_k": -1},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fuse([A, B], **kwargs)
    with pytest.raises(ValueError):
        fuse([])
