"""FlagEmbedding and Tevatron import/export: real sample files, score alignment, exact round trips."""

from __future__ import annotations

import json

import pytest

from densekd.data.io import DataFormatError
from densekd.data.types import Passage, Query, TrainGroup
from densekd.teachers.formats import (
    flagembedding_passage_id, load_flagembedding, load_tevatron, write_flagembedding, write_tevatron,
)


def _raw(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize(("name", "n_neg"), [
    ("msmarco", [25] * 10), ("nq", [98] + [100] * 5 + [79] + [100] * 3)])
def test_flagembedding_samples_load_with_aligned_scores(shared_data, name, n_neg):
    path = shared_data / "flagembedding-kd-samples" / f"{name}.jsonl"
    queries, corpus, groups = load_flagembedding(path)
    rows = _raw(path)
    assert len(queries) == len(groups) == len(rows) == 10
    assert [len(g.neg_ids) for g in groups] == n_neg                 # nq line 1 repeats 2 texts
    assert len(corpus) == len({t for r in rows for t in r["pos"] + r["neg"]})
    for g, row in zip(groups, rows):
        assert queries[g.qid].text == row["query"] and len(g.pos_ids) == 1
        g.validate()
        for key in ("pos", "neg"):
            for text, score in zip(row[key], row[f"{key}_scores"]):
                pid = flagembedding_passage_id(text)
                assert corpus[pid].text == text and g.teacher_scores[pid] == score
        assert [corpus[p].text for p in g.pos_ids] == row["pos"]


def test_flagembedding_export_import_round_trip(shared_data, tmp_path):
    src = shared_data / "flagembedding-kd-samples"
    for name in ("msmarco", "nq"):
        loaded = load_flagembedding(src / f"{name}.jsonl")
        out = tmp_path / f"{name}.jsonl"
        assert write_flagembedding(out, loaded[2], loaded[0], loaded[1]) == 10
        assert load_flagembedding(out) == loaded
    # Without repeated texts the export is the input minus the ignored prompt/type fields.
    drop = ("prompt", "type")
    assert _raw(tmp_path / "msmarco.jsonl") == [
        {k: v for k, v in r.items() if k not in drop} for r in _raw(src / "msmarco.jsonl")]


def test_flagembedding_without_scores_repeats_and_synthetic(tmp_path):
    path = tmp_path / "fe.jsonl"
    rows = [{"query": "q", "pos": ["a"], "neg": ["b", "a", "b"]}, {"query": "q", "pos": ["b"], "neg": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    queries, corpus, groups = load_flagembedding(path)
    assert [g.qid for g in groups] == [groups[0].qid, groups[0].qid + "-2"] and len(queries) == 2
    assert groups[0].neg_ids == [flagembedding_passage_id("b")] and groups[0].teacher_scores is None
    syn = TrainGroup(groups[1].qid, groups[1].pos_ids, ["syn"], {groups[1].pos_ids[0]: 1.0, "syn": 0.5},
                     extra_passages={"syn": "made up"})
    write_flagembedding(path, [syn], queries, corpus)
    assert _raw(path) == [{"query": "q", "pos": ["b"], "neg": ["made up"], "pos_scores": [1.0],
                           "neg_scores": [0.5]}]


@pytest.mark.parametrize(("row", "message"), [
    ({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [1.0], "neg_scores": [1.0, 2.0]},
     "neg_scores has 2"),
    ({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [], "neg_scores": [1.0]}, "pos_scores has 0"),
    ({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [float("nan")], "neg_scores": [1.0]}, "finite"),
    ({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [1.0]}, "both present"),
    ({"query": "q", "pos": [], "neg": ["b"]}, "needs a positive"),
    ({"query": "q", "pos": [1], "neg": []}, "list of strings"),
    ({"pos": ["a"], "neg": []}, "missing field 'query'"),
])
def test_flagembedding_errors_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "fe.jsonl"
    good = {"query": "ok", "pos": ["x"], "neg": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message) as err:
        load_flagembedding(path)
    assert f"{path}:2:" in str(err.value)


def _tevatron_set():
    corpus = {p.id: p for p in [Passage("d1", "Aspirin reduces heart attacks.", "Aspirin"),
                                Passage("d2", "Vitamin C and colds.", ""),
                                Passage("d3", "Paris, France.", "Paris")]}
    queries = {"q1": Query("q1", "aspirin heart"), "7": Query("7", "capital of france", ["Paris"])}
    groups = [TrainGroup("q1", ["d1"], ["d2", "d3"], {"d1": 2.5, "d2": -1.25, "d3": 0.1}),
              TrainGroup("7", ["d3"], ["d1"])]
    return queries, corpus, groups


def test_tevatron_round_trip_is_exact(tmp_path):
    queries, corpus, groups = _tevatron_set()
    out = tmp_path / "tev.jsonl"
    assert write_tevatron(out, groups, queries, corpus) == 2
    rows = _raw(out)
    assert rows[0]["positive_passages"] == [{"docid": "d1", "title": "Aspirin", "text": corpus["d1"].text,
                                             "score": 2.5}]
    assert "score" not in rows[1]["negative_passages"][0] and rows[1]["answers"] == ["Paris"]
    assert load_tevatron(out) == (queries, corpus, groups)
    again = tmp_path / "again.jsonl"
    q2, c2, g2 = load_tevatron(out)
    write_tevatron(again, g2, q2, c2)
    assert again.read_bytes() == out.read_bytes()
    assert load_tevatron(out, score_field=None)[2][0].teacher_scores is None


def test_flagembedding_to_tevatron_and_back(shared_data, tmp_path):
    queries, corpus, groups = load_flagembedding(shared_data / "flagembedding-kd-samples" / "msmarco.jsonl")
    write_tevatron(tmp_path / "tev.jsonl", groups, queries, corpus)
    q2, c2, g2 = load_tevatron(tmp_path / "tev.jsonl")
    assert (q2, c2, g2) == (queries, corpus, groups)


P1 = [{"docid": "d1", "text": "t"}]


@pytest.mark.parametrize(("second", "message"), [
    ({"query_id": "a", "query": "x", "positive_passages": P1}, "duplicate query_id"),
    ({"query_id": "b", "query": "x", "positive_passages": [{"docid": "d1", "text": "other"}]},
     "different title/text"),
    ({"query_id": "b", "query": "x", "positive_passages": [{"docid": "d1", "text": "t", "score": 1.0}],
      "negative_passages": [{"docid": "d2", "text": "u"}]}, "others not"),
    ({"query_id": "b", "query": "x", "positive_passages": []}, "needs a positive"),
    ({"query_id": "b", "query": "x", "positive_passages": [{"docid": "d1", "text": "t", "score": "1"}]},
     "number"),
    ({"query_id": "b", "query": [101, 2054], "positive_passages": P1}, "must be str"),
])
def test_tevatron_errors_name_file_and_line(tmp_path, second, message):
    path = tmp_path / "tev.jsonl"
    first = {"query_id": "a", "query": "x", "positive_passages": P1}
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message) as err:
        load_tevatron(path)
    assert f"{path}:2:" in str(err.value)


def test_writers_report_missing_texts(tmp_path):
    queries, corpus, groups = _tevatron_set()
    with pytest.raises(DataFormatError, match="not in the corpus"):
        write_tevatron(tmp_path / "x.jsonl", [TrainGroup("q1", ["zz"])], queries, corpus)
    with pytest.raises(DataFormatError, match="not in the queries"):
        write_flagembedding(tmp_path / "x.jsonl", [TrainGroup("nope", ["d1"])], queries, corpus)
    assert not (tmp_path / "x.jsonl").exists()
