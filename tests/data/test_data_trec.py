"""TREC run files."""

from __future__ import annotations

import pytest

from densekd.data import DataFormatError, load_run, write_run

RUN = {"q1": {"d1": 0.5, "d2": 1.25, "d3": 0.5}, "q2": {"d9": -3.0e-7}}


def test_run_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    assert write_run(path, RUN) == 4
    assert load_run(path) == RUN


def test_run_ranked_by_score_ties_by_pid(tmp_path):
    path = tmp_path / "run.trec"
    write_run(path, RUN, tag="bm25")
    lines = [line.split() for line in path.read_text().splitlines()]
    ranked = [(f[0], f[2], f[3]) for f in lines]
    assert ranked == [("q1", "d2", "1"), ("q1", "d1", "2"), ("q1", "d3", "3"), ("q2", "d9", "1")]
    assert {f[1] for f in lines} == {"Q0"} and {f[5] for f in lines} == {"bm25"}


def test_run_top_k(tmp_path):
    path = tmp_path / "run.trec"
    assert write_run(path, RUN, k=1) == 2
    assert load_run(path) == {"q1": {"d2": 1.25}, "q2": {"d9": -3.0e-7}}


def test_run_writer_rejects_bad_values(tmp_path):
    path = tmp_path / "run.trec"
    with pytest.raises(DataFormatError, match="whitespace"):
        write_run(path, {"q 1": {"d": 1.0}})
    with pytest.raises(DataFormatError, match="non-finite"):
        write_run(path, {"q": {"d": float("nan")}})
    assert not path.exists()  # atomic: a failed write leaves nothing behind
