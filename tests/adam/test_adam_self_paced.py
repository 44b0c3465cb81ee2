"""Self-paced selection: quality measures, exact scheduled subsets, the dataset wrapper and weights."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from densekd.data.types import Passage, Query, TrainGroup
from densekd.training.collator import DistillCollator
from densekd.training.dataset import TrainGroupDataset
from densekd.training.self_paced import (
    SelfPacedConfig,
    SelfPacedDataset,
    SelfPacedLogCallback,
    SelfPacedSelector,
    instance_quality,
)

N_NEG = 9


def _data(n: int = 10, seed: int = 0):
    """``n`` groups, each with one positive, ``N_NEG`` negatives and a distinct positive logit."""
    rng = np.random.default_rng(seed)
    pos_logits = rng.permutation(n).astype(float)
    corpus = {f"p{i}": Passage(f"p{i}", f"positive {i}") for i in range(n)}
    corpus |= {f"n{j}": Passage(f"n{j}", f"negative {j}") for j in range(N_NEG)}
    queries = {f"q{i}": Query(f"q{i}", f"query {i}") for i in range(n)}
    groups = []
    for i in range(n):
        negs = [f"n{j}" for j in range(N_NEG)]
        scores = {f"p{i}": float(pos_logits[i])} | {f"n{j}": 0.1 * j for j in range(N_NEG)}
        groups.append(TrainGroup(f"q{i}", [f"p{i}"], negs, scores))
    return groups, queries, corpus


def _expected_quality(group: TrainGroup, measure: str, t: float = 1.0) -> float:
    s = group.teacher_scores
    negs = [s[n] for n in group.neg_ids if n not in (group.extra_passages or {})]
    vals = []
    for p in group.pos_ids:
        if measure == "margin":
            vals.append(s[p] - max(negs))
        else:
            vals.append(math.exp(s[p] / t) / (math.exp(s[p] / t) + sum(math.exp(x / t) for x in negs)))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("measure,t", [("pos_prob", 1.0), ("pos_prob", 0.3), ("margin", 1.0)])
def test_quality_is_the_teachers_confidence_in_the_positive(measure, t):
    groups, _, _ = _data()
    two_pos = TrainGroup("q", ["a", "b"], ["c", "d", "dark:mask:q:0"],
                         {"a": 3.0, "b": 0.5, "c": 1.0, "d": -2.0, "dark:mask:q:0": 9.0},
                         {"dark:mask:q:0": "synthetic"})
    got = instance_quality(groups + [two_pos], measure, t)
    want = [_expected_quality(g, measure, t) for g in groups + [two_pos]]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_quality_edge_cases():
    lonely = TrainGroup("q", ["a"], [], {"a": 1.0})
    assert instance_quality([lonely], "pos_prob").tolist() == [1.0]
    assert instance_quality([lonely], "margin").tolist() == [math.inf]
    huge = TrainGroup("q", ["a"], ["b"], {"a": 1000.0, "b": 0.0})
    assert instance_quality([huge], "pos_prob", 0.01).tolist() == [1.0]   # no overflow
    with pytest.raises(ValueError, match="teacher_scores"):
        instance_quality([TrainGroup("q", ["a"], ["b"])])


@pytest.mark.parametrize("schedule,start,end,warm,fractions", [
    ("linear", 0.3, 1.0, 3, [0.3, 0.3 + 0.7 / 3, 0.3 + 1.4 / 3, 1.0, 1.0, 1.0]),
    ("step", 0.4, 0.9, 2, [0.4, 0.4, 0.9, 0.9, 0.9, 0.9]),
    ("none", 0.4, 0.8, 2, [0.8] * 6),
    ("linear", 1.0, 0.5, 1, [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]),    # anti-curriculum is allowed
])
def test_selector_keeps_exactly_the_scheduled_highest_quality_instances(schedule, start, end, warm, fractions):
    groups, _, _ = _data(n=17)
    cfg = SelfPacedConfig(schedule=schedule, start_fraction=start, end_fraction=end, warm_epochs=warm)
    sel = SelfPacedSelector(groups, cfg)
    quality = [_expected_quality(g, "pos_prob") for g in groups]
    for epoch, f in enumerate(fractions):
        assert sel.fraction(epoch) == pytest.approx(f)
        kept = sel.kept(epoch)
        assert len(kept) == round(f * 17)
        best = sorted(range(17), key=lambda i: -quality[i])[: round(f * 17)]
        assert set(kept.tolist()) == set(best)
        assert sel.weights(epoch).tolist() == [1.0 if i in best else 0.0 for i in range(17)]
        stats = sel.epoch_stats(epoch)
        assert stats["kept"] == len(best)
        assert stats["quality_min"] == pytest.approx(min(quality[i] for i in best))
        assert stats["quality_max"] == pytest.approx(max(quality))


def test_selector_ties_and_tiny_fractions_are_deterministic():
    groups = [TrainGroup(f"q{i}", ["p"], ["n"], {"p": 1.0, "n": 0.0}) for i in range(5)]
    sel = SelfPacedSelector(groups, SelfPacedConfig(start_fraction=0.01, warm_epochs=1))
    assert sel.kept(0).tolist() == [0]                     # at least one; ties go to the lower index
    assert sel.kept(1).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [{"measure": "loss"}, {"schedule": "cosine"}, {"mode": "both"},
                                 {"start_fraction": 0.0}, {"end_fraction": 1.5}, {"warm_epochs": -1},
                                 {"temperature": 0.0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SelfPacedConfig(**bad)


def _wrapped(mode: str, start: float, n: int = 10, group_size: int = 4, warm: int = 2):
    groups, queries, corpus = _data(n)
    ds = TrainGroupDataset(groups, queries, corpus, group_size=group_size, seed=7)
    sel = SelfPacedSelector(groups, SelfPacedConfig(start_fraction=start, warm_epochs=warm, mode=mode))
    return SelfPacedDataset(ds, sel), ds, sel


def test_select_mode_draws_only_the_kept_subset_and_keeps_the_epoch_length():
    sp, ds, sel = _wrapped("select", 0.3, n=10)
    for epoch in range(4):
        sp.set_epoch(epoch)
        assert len(sp) == 10                                   # the Trainer's steps per epoch stay put
        drawn = Counter(sp[i]["qid"] for i in range(len(sp)))
        kept = {f"q{i}" for i in sel.kept(epoch)}
        assert set(drawn) == kept
        assert max(drawn.values()) - min(drawn.values()) <= 1  # drawn evenly


def test_repeated_draws_see_new_negatives():
    sp, ds, sel = _wrapped("select", 0.2, n=10)                # K = 2: each kept instance 5 times
    windows = {}
    for i in range(len(sp)):
        item = sp[i]
        windows.setdefault(item["qid"], []).append(tuple(item["pids"][1:]))
    for qid, seen in windows.items():
        assert len(seen) == 5 and len(set(seen)) > 1


def test_select_mode_at_full_fraction_is_the_plain_dataset():
    sp, ds, _ = _wrapped("select", 1.0)
    for epoch in range(3):
        sp.set_epoch(epoch)
        ds.set_epoch(epoch)
        wrapped = sorted((sp[i]["qid"], sp[i]["pids"], sp[i]["teacher_scores"]) for i in range(len(sp)))
        plain = sorted((ds[i]["qid"], ds[i]["pids"], ds[i]["teacher_scores"]) for i in range(len(ds)))
        assert wrapped == plain


def test_wrapped_items_are_a_pure_function_of_epoch_and_position():
    a, _, _ = _wrapped("select", 0.4)
    b, _, _ = _wrapped("select", 0.4)
    a.set_epoch(2)
    b.set_epoch(1)
    b.set_epoch(2)                                            # a different path to the same epoch
    assert [a[i] for i in range(10)] == [b[i] for i in range(10)]
    assert [a[i] for i in range(10)] == [a[i] for i in reversed(range(10))][::-1]


def test_weight_mode_weights_items_and_the_collator_stacks_them():
    sp, ds, sel = _wrapped("weight", 0.5)
    collate = DistillCollator(lambda texts: {"n": len(texts)}, lambda texts: {"n": len(texts)})
    for epoch in range(3):
        sp.set_epoch(epoch)
        ds.set_epoch(epoch)
        items = [sp[i] for i in range(len(sp))]
        assert [it["weight"] for it in items] == sel.weights(epoch).tolist()
        assert all({k: v for k, v in it.items() if k != "weight"} == ds[i] for i, it in enumerate(items))
        batch = collate(items[:4])
        assert batch["weights"].tolist() == sel.weights(epoch)[:4].tolist()
    assert "weights" not in collate([ds[0], ds[1]])           # unweighted batches keep their keys
    with pytest.raises(ValueError, match="weight"):
        collate([sp[0], ds[1]])


def test_log_callback_reports_the_epochs_statistics():
    from types import SimpleNamespace

    sp, _, sel = _wrapped("select", 0.3, n=10)
    cb = SelfPacedLogCallback(sp)
    cb.on_epoch_begin(None, SimpleNamespace(epoch=1.0), None)
    logs = cb.pop_pending_logs()
    assert logs["self_paced_fraction"] == pytest.approx(round(sel.fraction(1) * 10) / 10)
    assert logs["self_paced_kept"] == len(sel.kept(1))
    assert {"self_paced_quality_mean", "self_paced_quality_min", "self_paced_quality_max"} <= set(logs)
    assert cb.pop_pending_logs() == {}
