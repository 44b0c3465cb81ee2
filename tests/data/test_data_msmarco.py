"""MS MARCO TSV formats: collection, queries, TREC qrels, triples."""

from __future__ import annotations

import pytest

from densekd.data import (
    DataFormatError, Passage, Query, TrainGroup, groups_to_triples, iter_collection, load_collection,
    load_id_triples, load_text_triples, load_trec_qrels, load_tsv_queries, stable_id, write_collection,
    write_triples, write_trec_qrels, write_tsv_queries,
)

COLLECTION = {
    "0": Passage("0", "The presence of communication amid scientific minds was important."),
    "1": Passage("1", 'Manhattan "Project" – ünïcode', ""),
}


def test_collection_round_trip(tmp_path):
    path = tmp_path / "collection.tsv"
    assert write_collection(path, COLLECTION) == 2
    assert path.read_text(encoding="utf-8").splitlines()[0].count("\t") == 1  # no title column
    assert load_collection(path) == COLLECTION
    assert list(iter_collection(path)) == list(COLLECTION.values())


def test_collection_title_column_round_trip(tmp_path):
    path = tmp_path / "collection.tsv"
    corpus = {**COLLECTION, "2": Passage("2", "body", "A title")}
    write_collection(path, corpus)
    assert load_collection(path) == corpus


def test_tsv_queries_round_trip_drops_answers(tmp_path):
    path = tmp_path / "queries.tsv"
    write_tsv_queries(path, {"q1": Query("q1", "what is x"), "q2": Query("q2", "who", ["me"])})
    assert load_tsv_queries(path) == {"q1": Query("q1", "what is x"), "q2": Query("q2", "who")}


def test_trec_qrels_round_trip(tmp_path):
    path = tmp_path / "qrels.txt"
    qrels = {"1185869": {"0": 1, "1": 0}, "2": {"1": 3}}
    assert write_trec_qrels(path, qrels) == 3
    assert path.read_text().splitlines()[0] == "1185869 0 0 1"
    assert load_trec_qrels(path, corpus=COLLECTION, queries={"1185869": None, "2": None}) == qrels


def test_trec_qrels_accepts_tabs(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("1\t0\t7\t1\n1 Q0  8 2\n")
    assert load_trec_qrels(path) == {"1": {"7": 1, "8": 2}}


def test_id_triples_round_trip(tmp_path):
    groups = [TrainGroup("q1", ["p1", "p2"], ["n1", "n2"]), TrainGroup("q2", ["p3"], ["n1"])]
    path = tmp_path / "triples.tsv"
    assert write_triples(path, groups_to_triples(groups)) == 5
    assert load_id_triples(path) == groups


def test_id_triples_group_and_drop_positives_from_negatives(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("q1\tp1\tn1\nq2\tp9\tn1\nq1\tp1\tn1\nq1\tn1\tn2\n")
    assert load_id_triples(path) == [TrainGroup("q1", ["p1", "n1"], ["n2"]), TrainGroup("q2", ["p9"], ["n1"])]


def test_groups_without_negatives_cannot_be_triples(tmp_path):
    with pytest.raises(DataFormatError, match="without negatives"):
        write_triples(tmp_path / "t.tsv", groups_to_triples([TrainGroup("q", ["p"])]))
    assert not (tmp_path / "t.tsv").exists()


def test_text_triples_get_stable_ids(tmp_path):
    path = tmp_path / "triples.tsv"
    write_triples(path, [("what is a", "a is b", "c is d"), ("what is a", "a is b", "e is f")])
    data = load_text_triples(path)
    qid, pos = stable_id("what is a", prefix="q"), stable_id("a is b", prefix="p")
    assert data.queries == {qid: Query(qid, "what is a")}
    assert data.corpus[pos] == Passage(pos, "a is b")
    negs = [stable_id("c is d", prefix="p"), stable_id("e is f", prefix="p")]
    assert data.groups == [TrainGroup(qid, [pos], negs)]
    assert load_text_triples(path) == data  # ids do not depend on the run


def test_triples_writer_checks_width(tmp_path):
    with pytest.raises(DataFormatError, match="cannot write row 2: 2 fields"):
        write_triples(tmp_path / "t.tsv", [("q", "p", "n"), ("q", "p")])
