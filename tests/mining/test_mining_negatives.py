"""Hard-negative mining on a hand-built run: rank range, positives, margins, teacher denoising, sampling."""

from __future__ import annotations

import pytest

from densekd.mining import mine_negatives, mine_negatives_with_stats

# q1 ranking: p1 d1 d2 p2 d3 d4 d5 d6 d7 d8 (scores 10 .. 1); d3 is judged non-relevant (rel 0).
RUN = {
    "q1": {"p1": 10.0, "d1": 9.0, "d2": 8.0, "p2": 7.0, "d3": 6.0, "d4": 5.0, "d5": 4.0, "d6": 3.0,
           "d7": 2.0, "d8": 1.0},
    "q2": {"d1": 5.0, "d2": 4.0, "d3": 3.0},          # its positive is not in the run
    "q3": {"d1": 1.0, "d2": 0.5},                     # no judged positive
}
QRELS = {"q1": {"p1": 2, "p2": 1, "d3": 0}, "q2": {"px": 1}, "q4": {"d1": 1}}


def _negs(**kw) -> dict[str, list[str]]:
    return {g.qid: g.neg_ids for g in mine_negatives(RUN, QRELS, **kw)}


def test_top_sampling_positives_and_skipped_queries():
    groups, stats = mine_negatives_with_stats(RUN, QRELS, n_negatives=3)
    assert [g.qid for g in groups] == ["q1", "q2"]
    assert groups[0].pos_ids == ["p1", "p2"]          # relevance desc
    assert groups[0].neg_ids == ["d1", "d2", "d3"]    # p2 skipped, judged-non-relevant d3 kept
    assert groups[0].teacher_scores is None
    assert stats.no_positive_queries == 1 and stats.positives_not_in_run == 1   # q3; q4
    assert stats.positives_in_range == 2 and stats.groups == 2


def test_rank_range_counts_positives_in_ranks():
    assert _negs(rank_range=(2, 6))["q1"] == ["d2", "d3", "d4"]     # ranks 2..5: d2 p2 d3 d4
    assert _negs(rank_range=(8, None))["q1"] == ["d7", "d8"]
    assert _negs(rank_range=(5, 100))["q2"] == []


@pytest.mark.parametrize(("kw", "dropped"), [
    ({"absolute_margin": 1.5}, ["d1"]),                               # score > 10 - 1.5
    ({"relative_margin": 0.25}, ["d1", "d2"]),                        # score > 10 * 0.75
    ({"absolute_margin": 4.5, "relative_margin": 0.25}, ["d1", "d2", "d3"]),   # tighter limit wins
    ({"absolute_margin": 2.0}, ["d1"]),                               # 8.0 == limit is kept
])
def test_margin_filters_drop_exactly(kw, dropped):
    groups, stats = mine_negatives_with_stats(RUN, QRELS, n_negatives=100, **kw)
    all_negs = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
    assert groups[0].neg_ids == [d for d in all_negs if d not in dropped]
    assert stats.dropped_margin == len(dropped)
    # q2's positive is absent from the run: no reference score, so no margin filter.
    assert groups[1].neg_ids == ["d1", "d2", "d3"] and stats.margin_skipped_queries == 1


def test_margin_uses_best_positive_outside_rank_range():
    negs = _negs(rank_range=(4, 100), absolute_margin=4.5)["q1"]      # p1 (10.0) is at rank 0
    assert negs == ["d4", "d5", "d6", "d7", "d8"]                     # d3 (6.0 > 5.5) dropped


def test_teacher_false_negative_removal():
    teacher = {"q1": {"p1": 5.0, "p2": 3.0, "d1": 4.0, "d2": 2.9, "d3": 1.0, "d5": 2.4}}
    groups, stats = mine_negatives_with_stats(RUN, QRELS, n_negatives=100, teacher_scores=teacher,
                                              teacher_margin=0.5)
    # threshold = min(5, 3) - 0.5 = 2.5: d1 and d2 dropped; unscored d4, d6.. kept.
    assert groups[0].neg_ids == ["d3", "d4", "d5", "d6", "d7", "d8"]
    assert stats.dropped_teacher == 2 and stats.teacher_unscored == 4
    assert stats.teacher_skipped_queries == 1                         # q2 has no teacher scores
    assert _negs(n_negatives=100, teacher_scores=teacher)["q1"][0] == "d1"   # no margin: filter off


def test_random_sampling_is_seeded_per_query_and_in_rank_order():
    a = _negs(n_negatives=4, sampling="random", seed=7)
    assert a == _negs(n_negatives=4, sampling="random", seed=7)
    reordered = dict(reversed(list(RUN.items())))
    b = {g.qid: g.neg_ids for g in mine_negatives(reordered, QRELS, n_negatives=4, sampling="random", seed=7)}
    assert b == a
    order = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
    assert len(a["q1"]) == 4 and a["q1"] == sorted(a["q1"], key=order.index)
    draws = {tuple(_negs(n_negatives=4, sampling="random", seed=s)["q1"]) for s in range(10)}
    assert len(draws) > 1                                             # the seed matters


def test_more_requested_than_available():
    groups, stats = mine_negatives_with_stats(RUN, QRELS, n_negatives=50, sampling="random")
    assert groups[0].neg_ids == ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
    assert stats.short_queries == 2 and stats.negatives == 11


def test_strict_mode_and_bad_arguments():
    with pytest.raises(ValueError, match="q3"):
        mine_negatives(RUN, QRELS, queries_with_positives_only=False)
    for kw in ({"n_negatives": -1}, {"rank_range": (5, 5)}, {"sampling": "hard"},
               {"relative_margin": 1.0}, {"absolute_margin": -1.0}, {"teacher_margin": -0.1}):
        with pytest.raises(ValueError):
            mine_negatives(RUN, QRELS, **kw)
