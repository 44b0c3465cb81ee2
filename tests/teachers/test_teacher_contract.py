"""One teacher contract: each query's candidate list in, raw logits out; pair scorers adapted; one rerank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.data.types import Passage, Query
from densekd.teachers import CandidateList, CrossEncoderTeacher, PairTeacher, Teacher, as_teacher, dot_scores, rerank

CORPUS = {"d1": Passage("d1", "Aspirin reduces the risk of heart attack.", title="Aspirin"),
          "d2": Passage("d2", "Paris is the capital of France."),
          "d3": Passage("d3", "Coffee is a drink.", title="Coffee")}
QUERIES = {"q1": Query("q1", "aspirin and the heart"), "q2": Query("q2", "capital of france")}


class LengthScorer:
    """A pair scorer (the shape of the pre-contract teachers): the passage text's length is its logit."""

    fingerprint = "length/v1"

    def score(self, pairs, batch_size=64, show_progress=False):
        return np.array([float(len(p)) for _, p in pairs], dtype=np.float32)


def test_cross_encoder_teacher_scores_all_lists_as_one_set_of_pairs(tiny_bert_path):
    torch.manual_seed(0)
    teacher = CrossEncoderTeacher.from_pretrained(tiny_bert_path, max_length=32)
    assert isinstance(teacher, Teacher)
    lists = [CandidateList("aspirin", [CORPUS["d1"], "a synthetic passage"]), CandidateList("nothing", []),
             CandidateList("france", [CORPUS["d2"]])]
    scored = teacher.score_candidates(lists, batch_size=2)
    assert [s.shape for s in scored] == [(2,), (0,), (1,)] and all(s.dtype == np.float32 for s in scored)
    pairs = [("aspirin", "Aspirin. Aspirin reduces the risk of heart attack."), ("aspirin", "a synthetic passage"),
             ("france", "Paris is the capital of France.")]
    np.testing.assert_array_equal(np.concatenate(scored), teacher.score(pairs, batch_size=2))


def test_a_pair_scorer_becomes_a_teacher_and_anything_else_is_refused():
    teacher = as_teacher(LengthScorer())
    assert isinstance(teacher, PairTeacher) and isinstance(teacher, Teacher) and teacher.fingerprint == "length/v1"
    assert as_teacher(teacher) is teacher
    scored = teacher.score_candidates([CandidateList("q", [CORPUS["d3"], "abc"])])
    assert [s.tolist() for s in scored] == [[float(len("Coffee. Coffee is a drink.")), 3.0]]
    with pytest.raises(TypeError, match="not a teacher"):
        as_teacher(object())


def test_rerank_reads_candidates_as_passages_and_keeps_the_top_k():
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {}}
    out = rerank(LengthScorer(), run, QUERIES, CORPUS, k=2)
    assert out == {"q1": {"d1": float(len(CORPUS["d1"].full_text())), "d2": float(len(CORPUS["d2"].text))}, "q2": {}}
    assert rerank(LengthScorer(), {}, QUERIES, CORPUS) == {}
    with pytest.raises(ValueError, match="k must be"):
        rerank(LengthScorer(), run, QUERIES, CORPUS, k=0)


def test_dot_scores_scores_each_querys_candidates_from_stored_vectors():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    q = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    out = dot_scores(q, ["q1", "q2", "q3"], {"q1": ["c", "a"], "q2": ["b"]}, vectors, {"a": 0, "b": 1, "c": 2})
    assert out == {"q1": {"c": 3.0, "a": 2.0}, "q2": {"b": 3.0}, "q3": {}}
