"""Self-supervised sentence queries from the corpus."""

from __future__ import annotations

import pytest

from densekd.data.types import Passage
from densekd.mining.pseudo_queries import PREFIX, sentence_queries, split_sentences


def _corpus(n: int) -> dict[str, Passage]:
    return {f"d{i}": Passage(f"d{i}", f"Short one. Sentence number {i} of the abstract is long enough here. "
                                      f"Another sentence {i} that also counts as a query text.", title=f"Title {i}")
            for i in range(n)}


def test_each_query_is_a_sentence_of_its_positive_passage():
    corpus = _corpus(30)
    queries, qrels = sentence_queries(corpus, 10, seed=3)
    assert len(queries) == 10 and set(queries) == set(qrels)
    for qid, q in queries.items():
        (pid, rel), = qrels[qid].items()
        assert qid == PREFIX + pid and rel == 1
        assert q.text in split_sentences(corpus[pid].text)
        assert len(q.text.split()) >= 6  # "Short one." is never chosen


def test_choice_depends_on_seed_not_on_corpus_order():
    corpus = _corpus(30)
    reordered = dict(reversed(list(corpus.items())))
    assert sentence_queries(corpus, 10, seed=1) == sentence_queries(reordered, 10, seed=1)
    assert set(sentence_queries(corpus, 10, seed=1)[0]) != set(sentence_queries(corpus, 10, seed=2)[0])


def test_passages_without_a_usable_sentence_are_skipped_and_bad_arguments_refused():
    corpus = {"a": Passage("a", "Too short."), **_corpus(2)}
    queries, _ = sentence_queries(corpus, 5)
    assert set(queries) == {PREFIX + "d0", PREFIX + "d1"}
    with pytest.raises(ValueError):
        sentence_queries(corpus, 0)
