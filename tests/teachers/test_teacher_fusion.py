"""Teacher-signal fusion: z-normalisation, missing candidates, raw cross-encoder passthrough."""

from __future__ import annotations

import math

import numpy as np
import pytest

from densekd.scores import zscore
from densekd.teachers.fusion import fuse_candidates


def test_cross_encoder_alone_keeps_raw_logits():
    out = fuse_candidates(["a", "b"], {"cross_encoder": {"a": 3.0, "b": -1.0}}, {"cross_encoder": 2.0})
    assert out == {"a": 6.0, "b": -2.0}


def test_weighted_sum_of_zscores_hand_computed():
    # ce: [2, 0, -2] -> z = [1.2247, 0, -1.2247]; bm25: [10, 30, 20] -> z = [-1.2247, 1.2247, 0]
    signals = {"cross_encoder": {"a": 2.0, "b": 0.0, "c": -2.0}, "bm25": {"a": 10.0, "b": 30.0, "c": 20.0}}
    out = fuse_candidates(["a", "b", "c"], signals, {"cross_encoder": 1.0, "bm25": 0.5})
    z = math.sqrt(1.5)
    assert out["a"] == pytest.approx(z - 0.5 * z)
    assert out["b"] == pytest.approx(0.5 * z)
    assert out["c"] == pytest.approx(-z)


def test_missing_candidate_gets_the_signals_floor():
    signals = {"cross_encoder": {"a": 1.0, "b": 2.0, "c": 3.0}, "bm25": {"a": 5.0, "b": 7.0}}  # c not retrieved
    out = fuse_candidates(["a", "b", "c"], signals, {"bm25": 1.0})
    bm25_z = zscore(np.array([5.0, 7.0, 5.0]))
    assert [out[p] for p in "abc"] == pytest.approx(bm25_z.tolist())


def test_invariant_to_affine_rescaling_of_a_signal():
    base = {"cross_encoder": {"a": 1.0, "b": 4.0, "c": 2.0}, "dense": {"a": 0.2, "b": 0.1, "c": 0.9}}
    scaled = {"cross_encoder": base["cross_encoder"], "dense": {k: 10 * v + 3 for k, v in base["dense"].items()}}
    w = {"cross_encoder": 1.0, "dense": 1.0}
    assert fuse_candidates("abc", base, w) == pytest.approx(fuse_candidates("abc", scaled, w))


def test_constant_signal_contributes_nothing():
    assert zscore(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("weights,match", [({"colbert": 1.0}, "unknown"), ({"bm25": 0.0}, ">= 0"),
                                           ({"bm25": -1.0}, ">= 0"), ({"dense": 1.0}, "needs signal")])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        fuse_candidates(["a"], {"cross_encoder": {"a": 1.0}}, weights)
