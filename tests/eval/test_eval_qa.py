"""QA answer metrics: SQuAD normalisation, EM/F1, DPR has-answer, answer recall, reader metrics."""

from __future__ import annotations

import json
import unicodedata

import pytest

from densekd.data.types import Passage, Query
from densekd.eval.qa import (
    answer_recall, dpr_tokens, exact_match, f1_score, has_answer, normalize_answer, reader_metrics,
)


@pytest.mark.parametrize(("raw", "norm"), [
    ("The Cat", "cat"),  # article and case
    ("a an the", ""),
    ("theatre and another", "theatre and another"),  # articles only as whole words
    ("Hello, World!", "hello world"),  # punctuation
    ("U.S.A.", "usa"),
    ("  multiple \t spaces\n", "multiple spaces"),
    ("“Paris” — France’s capital", "paris frances capital"),  # Unicode quotes, dash, apostrophe
    ("ÄPFEL", normalize_answer("äpfel")),
])
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_normalize_answer_unicode_composition() -> None:
    composed = unicodedata.normalize("NFC", "Beyoncé")
    decomposed = unicodedata.normalize("NFD", "Beyoncé")
    assert composed != decomposed
    assert normalize_answer(composed) == normalize_answer(decomposed)


def test_exact_match() -> None:
    assert exact_match("the Paris.", ["paris"]) == 1.0
    assert exact_match("Paris", "Paris") == 1.0  # a single answer string is accepted
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("Broncos", ["Denver Broncos", "the broncos"]) == 1.0  # any answer


def test_f1_score_hand_cases() -> None:
    # pred tokens {big, red, dog} vs gold {red, dog}: 2 shared -> P = 2/3, R = 1, F1 = 2PR/(P+R) = 0.8
    assert f1_score("the big red dog", ["red dog"]) == pytest.approx(0.8)
    # repeated tokens count once per occurrence: pred {dog, dog} vs {dog}: P = 1/2, R = 1 -> 2/3
    assert f1_score("dog dog", ["dog"]) == pytest.approx(2 / 3)
    # max over answers: 0 against "cat", 1 against "a dog"
    assert f1_score("dog", ["cat", "a dog"]) == 1.0
    assert f1_score("dog", ["cat"]) == 0.0
    assert f1_score("", ["cat"]) == 0.0


def test_dpr_tokens_and_has_answer() -> None:
    assert dpr_tokens("U.S. 1972-73") == ["u", ".", "s", ".", "1972", "-", "73"]
    text = "Apollo 17 left the Moon on 14 December 1972 (UTC)."
    assert has_answer(text, ["December 1972"])
    assert has_answer(text, ["1972"])  # next to punctuation
    assert not has_answer(text, ["1972 December"])  # order matters
    assert not has_answer("In 19723 nothing happened.", ["1972"])  # whole tokens only
    assert not has_answer("Who sang it?", ["The Who"])  # articles are not dropped
    assert has_answer("Songs by Beyonce.", ["Beyoncé"])  # accents ignored
    assert not has_answer("anything", ["", "  "])  # blank answers never match


def test_nq_open_answers_match_themselves(shared_data) -> None:
    path = shared_data / "nq-open" / "NQ-open.dev.jsonl"
    answers = [a for line in path.read_text(encoding="utf-8").splitlines() for a in json.loads(line)["answer"]]
    assert len(answers) > 3000
    for a in answers:
        assert exact_match(a, [a]) == 1.0, a
        assert has_answer(f"It is said that {a} is right.", [a]), a
        assert f1_score(a, [a]) == 1.0 or not normalize_answer(a), a  # answers like "A+" normalise to ""


CORPUS = {
    "p1": Passage("p1", "Paris is the capital of France.", title="Paris"),
    "p2": Passage("p2", "Lyon is a city in France.", title="Lyon"),
    "p3": Passage("p3", "The Denver Broncos won Super Bowl 50.", title="Super Bowl 50"),
    "p4": Passage("p4", "Tokyo is in Japan.", title="Berlin"),
}
QUERIES = {
    "a": Query("a", "capital of france", ["Paris"]),  # hit at rank 2
    "b": Query("b", "who won super bowl 50", ["Broncos"]),  # hit at rank 1
    "c": Query("c", "capital of germany", ["Berlin"]),  # only in p4's *title*: never a hit
    "d": Query("d", "not in the run", ["Paris"]),  # missing from the run: a miss
    "e": Query("e", "an IR query", None),  # no answers: not counted
}
RUN = {
    "a": {"p2": 3.0, "p1": 2.0, "p3": 1.0},
    "b": {"p3": 5.0, "p1": 1.0},
    "c": {"p4": 1.0},
    "e": {"p1": 1.0},
}


def test_answer_recall_toy_run() -> None:
    # 4 answerable queries; first hit ranks: a -> 2, b -> 1, c -> none, d -> none
    assert answer_recall(RUN, QUERIES, CORPUS, ks=(1, 2, 5)) == {
        "answer_recall@1": 1 / 4, "answer_recall@2": 2 / 4, "answer_recall@5": 2 / 4}


def test_answer_recall_errors() -> None:
    with pytest.raises(ValueError, match="not in the corpus"):
        answer_recall({"a": {"zz": 1.0}}, QUERIES, CORPUS, ks=(1,))
    with pytest.raises(ValueError, match="no query has answers"):
        answer_recall(RUN, {"e": QUERIES["e"]}, CORPUS)
    with pytest.raises(ValueError, match="positive"):
        answer_recall(RUN, QUERIES, CORPUS, ks=(0, 5))


def test_reader_metrics() -> None:
    preds = {"a": "paris", "b": "Denver Broncos", "zz": "ignored"}  # c, d missing -> 0
    # EM: a 1, b 0 ("denver broncos" != "broncos"), c 0, d 0 -> 1/4
    # F1: a 1, b P = 1/2, R = 1 -> 2/3, c 0, d 0 -> (1 + 2/3) / 4
    res = reader_metrics(preds, QUERIES)
    assert res == pytest.approx({"em": 1 / 4, "f1": (1 + 2 / 3) / 4})
