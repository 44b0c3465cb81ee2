"""DPR json and psgs_w100.tsv."""

from __future__ import annotations

import json
import logging

from densekd.data import (
    DprData, Passage, Query, TrainGroup, iter_psgs, load_dpr, load_psgs, stable_id, write_dpr, write_psgs,
)

# Shaped like biencoder-nq-train.json: int psg_ids, extra keys, one ctx without id, no item ids.
DPR_ITEMS = [
    {
        "dataset": "nq_train_psgs_w100", "question": "big little lies season 2 how many episodes",
        "answers": ["seven"],
        "positive_ctxs": [{"title": "Big Little Lies", "text": "The second season has seven episodes.",
                           "score": 1000, "title_score": 1, "passage_id": "18768923"}],
        "negative_ctxs": [{"title": "Cormac", "text": "Cormac is a name.", "psg_id": 42}],
        "hard_negative_ctxs": [{"title": "Little Lies", "text": "Little Lies is a song.", "passage_id": 7},
                               {"title": "", "text": "A ctx that ships without an id."}],
    },
    {"question": "who sings does he love me with reba", "answers": ["Linda Davis"], "positive_ctxs": [],
     "hard_negative_ctxs": [{"title": "Cormac", "text": "Cormac is a name.", "psg_id": 42}]},
    {"question": "big little lies season 2 how many episodes", "answers": ["7"],
     "positive_ctxs": [{"title": "Big Little Lies", "text": "The second season has seven episodes.",
                        "passage_id": "18768923"}]},
]


def test_load_dpr_real_shape(tmp_path):
    path = tmp_path / "nq.json"
    path.write_text(json.dumps(DPR_ITEMS, indent=2))
    data = load_dpr(path)
    q0 = stable_id(DPR_ITEMS[0]["question"], prefix="q")
    anon = stable_id("", "A ctx that ships without an id.", prefix="p")
    assert list(data.queries) == [q0, stable_id(DPR_ITEMS[1]["question"], prefix="q"), f"{q0}-2"]
    assert data.queries[q0].answers == ["seven"]
    assert list(data.corpus) == ["18768923", "7", anon, "42"]
    # hard negatives first, then the other negatives; the item without positives gives no group.
    assert data.groups == [TrainGroup(q0, ["18768923"], ["7", anon, "42"]),
                           TrainGroup(f"{q0}-2", ["18768923"], [])]
    assert load_dpr(path, negatives=("hard_negative_ctxs",)).groups[0].neg_ids == ["7", anon]


def test_dpr_round_trip(tmp_path):
    data = DprData(
        queries={"a": Query("a", "q one", ["x"]), "b": Query("b", "q two", None),
                 "c": Query("c", "q three", [])},
        corpus={"p1": Passage("p1", "text 1", "T1"), "p2": Passage("p2", "text 2"),
                "p3": Passage("p3", "t3")},
        groups=[TrainGroup("a", ["p1"], ["p2", "p3"]), TrainGroup("c", ["p3", "p2"], [])],
    )
    path = tmp_path / "out.json"
    assert write_dpr(path, data) == 3
    loaded = load_dpr(path)
    # ``answers: None`` is written as [] (DPR items always carry the key).
    assert loaded.queries == {**data.queries, "b": Query("b", "q two", [])}
    assert loaded.corpus == data.corpus and loaded.groups == data.groups


def test_conflicting_passage_text_warns(tmp_path, caplog):
    ctxs = [{"text": "one", "passage_id": 1}, {"text": "two", "passage_id": 1}]
    items = [{"question": "q", "positive_ctxs": ctxs}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(items))
    with caplog.at_level(logging.WARNING):
        data = load_dpr(path)
    assert data.corpus["1"].text == "one" and "1 ctxs reuse a passage id" in caplog.text


def test_psgs_reads_dpr_quoting(tmp_path):
    path = tmp_path / "psgs_w100.tsv"
    path.write_text('id\ttext\ttitle\n1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
                    '2\t"with a\ttab inside quotes"\t"Quoted ""title"""\n3\tplain text, no quotes\t\n',
                    encoding="utf-8")
    assert list(iter_psgs(path)) == [
        Passage("1", 'Aaron Aaron ( or ; "Ahärôn") is a prophet', "Aaron"),
        Passage("2", "with a\ttab inside quotes", 'Quoted "title"'),
        Passage("3", "plain text, no quotes", ""),
    ]


def test_psgs_round_trip(tmp_path):
    corpus = {"1": Passage("1", 'He said "hi"', "Aaron"), "x": Passage("x", '"lead quote', '"Title"'),
              "3": Passage("3", "no title")}
    path = tmp_path / "psgs.tsv"
    assert write_psgs(path, corpus) == 3
    assert path.read_text().splitlines()[0] == "id\ttext\ttitle"
    assert load_psgs(path) == corpus
