"""BEIR loaders and writers: round trips, split handling, streaming."""

from __future__ import annotations

import json
import types

import pytest

from densekd.data import (
    BeirData, DataFormatError, Passage, Query, iter_corpus, load_beir, load_corpus, load_qrels, load_queries,
    write_corpus, write_qrels, write_queries,
)

CORPUS = {
    "d1": Passage("d1", "Aspirin reduces the risk of heart attack.", "Aspirin"),
    "7": Passage("7", "Untitled passage with ünïcödé and \"quotes\"\tand a tab.", ""),
}
QUERIES = {
    "q1": Query("q1", "does aspirin help", None),
    "q2": Query("q2", "who won super bowl 50", ["Denver Broncos", "Broncos"]),
    "q3": Query("q3", "no answers known", []),
}
QRELS = {"q1": {"d1": 1, "7": 0}, "q2": {"7": 2}}


def test_corpus_round_trip(tmp_path):
    path = tmp_path / "corpus.jsonl"
    assert write_corpus(path, CORPUS) == 2
    assert load_corpus(path) == CORPUS
    assert write_corpus(path, CORPUS.values()) == 2  # any iterable of passages, overwritten atomically
    assert load_corpus(path) == CORPUS


def test_queries_round_trip_keeps_answers(tmp_path):
    path = tmp_path / "queries.jsonl"
    write_queries(path, QUERIES)
    loaded = load_queries(path)
    assert loaded == QUERIES
    assert loaded["q1"].answers is None and loaded["q3"].answers == []


def test_qrels_round_trip(tmp_path):
    path = tmp_path / "qrels.tsv"
    assert write_qrels(path, QRELS) == 3
    assert path.read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    assert load_qrels(path, corpus=CORPUS, queries=QUERIES) == QRELS


def test_qrels_header_is_optional_and_repeats_are_harmless(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("q1\td1\t1\nq1\td1\t1\nq1\t7\t-1\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "7": -1}}


def test_integer_ids_are_read_as_strings(tmp_path):
    corpus, queries = tmp_path / "c.jsonl", tmp_path / "q.jsonl"
    corpus.write_text(json.dumps({"_id": 4983, "title": "T", "text": "x"}) + "\n")
    queries.write_text(json.dumps({"_id": 0, "text": "y", "metadata": {}}) + "\n")
    assert load_corpus(corpus) == {"4983": Passage("4983", "x", "T")}
    assert list(load_queries(queries)) == ["0"]


def test_iter_corpus_streams(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "first"}\n{"_id": "b", "te')
    it = iter_corpus(path)
    assert isinstance(it, types.GeneratorType)
    assert next(it) == Passage("a", "first")  # served before the broken line is read
    with pytest.raises(DataFormatError):
        next(it)


def test_allow_empty_keeps_blank_passages(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "title": "", "text": ""}\n{"_id": "b"}\n')
    assert load_corpus(path, allow_empty=True) == {"a": Passage("a", ""), "b": Passage("b", "")}


def test_load_beir_restricts_queries_to_split(tmp_path):
    (tmp_path / "qrels").mkdir()
    write_corpus(tmp_path / "corpus.jsonl", CORPUS)
    write_queries(tmp_path / "queries.jsonl", QUERIES)
    write_qrels(tmp_path / "qrels" / "dev.tsv", {"q2": {"7": 1}})
    data = load_beir(tmp_path, "dev")
    assert isinstance(data, BeirData)
    assert data.corpus == CORPUS and list(data.queries) == ["q2"] and data.qrels == {"q2": {"7": 1}}


def test_load_beir_reuses_preloaded_corpus(toy_beir_dir):
    dev = load_beir(toy_beir_dir, "dev")
    train = load_beir(toy_beir_dir, "train", corpus=dev.corpus)
    assert train.corpus is dev.corpus
    assert list(train.queries) == ["q1", "q2", "q3", "q4", "q5"]
    assert train.queries["q5"].answers == ["Denver Broncos", "Broncos"]


def test_load_beir_checks_qrels_against_preloaded_corpus(toy_beir_dir):
    with pytest.raises(DataFormatError, match="unknown document id 'd1'"):
        load_beir(toy_beir_dir, "dev", corpus={"x": Passage("x", "text")})


def test_load_beir_names_available_splits(toy_beir_dir):
    with pytest.raises(DataFormatError, match=r"no qrels for split 'test' \(available: dev, train\)"):
        load_beir(toy_beir_dir, "test")
