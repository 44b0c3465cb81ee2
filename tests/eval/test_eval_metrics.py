"""Ranking metrics against hand-computed values on a toy run."""

from __future__ import annotations

from math import log2

import pytest

from densekd.eval.metrics import evaluate, parse_metric

# Judged queries (a relevant doc each): q1, q2, q3. q4 has only a rel=0 judgement -> not averaged.
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},  # 3 relevant docs, d9 never retrieved
    "q2": {"d5": 1},
    "q3": {"d7": 1},  # absent from the run -> 0 on every metric
    "q4": {"d8": 0},
}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6},  # gains by rank: 0, 2, 0, 1
    "q2": {"d6": 0.5, "d5": 0.4},  # gains by rank: 0, 1
    "q4": {"d8": 1.0},
    "q5": {"d1": 1.0},  # not judged: ignored
}

# nDCG@3, linear gains, discount log2(rank + 1):
#   q1: DCG = 0/log2(2) + 2/log2(3) + 0/log2(4);  ideal gains 2, 1, 1 -> IDCG = 2/1 + 1/log2(3) + 1/log2(4)
#   q2: DCG = 0 + 1/log2(3);                     IDCG = 1
#   q3: 0
NDCG3_Q1 = (2 / log2(3)) / (2 + 1 / log2(3) + 1 / 2)
NDCG3_Q2 = 1 / log2(3)


@pytest.mark.parametrize(("name", "expected"), [
    ("ndcg@3", (NDCG3_Q1 + NDCG3_Q2 + 0) / 3),
    # RR: first relevant doc at rank 2 for q1 and q2 -> (1/2 + 1/2 + 0) / 3
    ("mrr@10", (0.5 + 0.5 + 0) / 3),
    # recall@3: q1 finds d1 of {d1, d2, d9} -> 1/3; q2 finds d5 -> 1; q3 0
    ("recall@3", (1 / 3 + 1 + 0) / 3),
    # AP: q1 relevant at ranks 2 and 4 -> (1/2 + 2/4) / 3 relevant = 1/3; q2 -> (1/2) / 1; q3 0
    ("map", (1 / 3 + 1 / 2 + 0) / 3),
    # AP@2 (trec_eval map_cut: still divided by all relevant): q1 (1/2) / 3; q2 (1/2) / 1
    ("map@2", (1 / 6 + 1 / 2 + 0) / 3),
    # P@2: q1 {d3, d1} -> 1/2; q2 {d6, d5} -> 1/2; q3 0
    ("precision@2", (0.5 + 0.5 + 0) / 3),
])
def test_metric_matches_hand_computation(name: str, expected: float) -> None:
    assert evaluate(RUN, QRELS, [name])[name] == pytest.approx(expected, abs=1e-9)


def test_keys_are_names_as_given_and_defaults() -> None:
    res = evaluate(RUN, QRELS, ["nDCG@3", "map", "map"])
    assert list(res) == ["nDCG@3", "map"]
    assert set(evaluate(RUN, QRELS)) == {"ndcg@10", "mrr@10", "recall@100", "map"}


def test_per_query_fills_missing_judged_queries_with_zero() -> None:
    per_q = evaluate(RUN, QRELS, ["mrr@10", "ndcg@3"], per_query=True)
    assert per_q["mrr@10"] == {"q1": 0.5, "q2": 0.5, "q3": 0.0}  # q4 (no relevant), q5 (unjudged) absent
    assert per_q["ndcg@3"]["q1"] == pytest.approx(NDCG3_Q1)


def test_missing_queries_count_as_zero_not_skipped() -> None:
    # Only q2 answered: BEIR/pytrec would report MRR 0.5 (its mean over answered queries); we report 0.5/3.
    assert evaluate({"q2": RUN["q2"]}, QRELS, ["mrr@10"])["mrr@10"] == pytest.approx(0.5 / 3)
    assert evaluate({}, QRELS, ["mrr@10", "ndcg@10"]) == {"mrr@10": 0.0, "ndcg@10": 0.0}
    assert evaluate({"q1": {}}, QRELS, ["recall@3"])["recall@3"] == 0.0


def test_mrr_cutoff_is_applied() -> None:
    # The only relevant doc sits at rank 11: RR@10 = 0 but RR (no cutoff) = 1/11.
    run = {"q": {f"d{i:02d}": 100.0 - i for i in range(1, 21)}}
    qrels = {"q": {"d11": 1}}
    res = evaluate(run, qrels, ["mrr@10", "mrr@11", "mrr"])
    assert res == pytest.approx({"mrr@10": 0.0, "mrr@11": 1 / 11, "mrr": 1 / 11})


def test_score_ties_are_broken_by_doc_id_ascending() -> None:
    # densekd's top_k puts "a" before "b" on equal scores (trec_eval alone would put "b" first).
    res = evaluate({"q": {"b": 1.0, "a": 1.0}}, {"q": {"b": 1}}, ["mrr@10"])
    assert res["mrr@10"] == 0.5


def test_unknown_metric_lists_valid_names() -> None:
    for bad in ("ndcg@0", "recall", "bleu", "mrr@x", "precision"):
        with pytest.raises(ValueError, match=r"unknown metric .*valid metrics: ndcg, ndcg@k"):
            evaluate(RUN, QRELS, [bad])


def test_qrels_without_relevant_docs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query with a relevant document"):
        evaluate(RUN, {"q4": {"d8": 0}}, ["map"])


def test_parse_metric_maps_to_ir_measures() -> None:
    assert [str(parse_metric(n)) for n in ("ndcg@10", "mrr@10", "recall@100", "map", "precision@5", "map@5")] \
        == ["nDCG@10", "RR@10", "R@100", "AP", "P@5", "AP@5"]
