"""Offline annotation with a fake word-overlap teacher: file format, resume, caching, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densekd.data.io import DataFormatError
from densekd.data.types import Passage, Query, TrainGroup
from densekd.teachers.annotate import annotate, load_annotations, make_header

CORPUS = {pid: Passage(pid, text, title) for pid, title, text in [
    ("d1", "Aspirin", "aspirin reduces heart attack risk"),
    ("d2", "", "vitamin c does not prevent colds"),
    ("d3", "Smoking", "smoking causes lung cancer"),
    ("d4", "", "exercise lowers blood pressure"),
    ("d5", "Paris", "paris is the capital of france"),
    ("d6", "", "the broncos won super bowl 50"),
]}
QUERIES = {qid: Query(qid, text) for qid, text in [
    ("q1", "does aspirin prevent heart attacks"), ("q2", "vitamin c and colds"),
    ("q3", "what causes lung cancer"), ("q4", "capital of france"), ("q5", "who won super bowl 50"),
    ("q6", "does exercise lower blood pressure"),
]}
GROUPS = [
    TrainGroup("q1", ["d1"], ["d2", "d3"]),
    TrainGroup("q2", ["d2"], ["d1", "d4"]),
    TrainGroup("q3", ["d3"], ["d1"]),
    TrainGroup("q4", ["d5"], ["d6", "syn-1"], extra_passages={"syn-1": "the capital of spain is madrid"}),
    TrainGroup("q5", ["d6"], ["d5", "d3"]),
    TrainGroup("q6", ["d4", "d1"], ["d2"]),
]


def overlap(query: str, text: str) -> float:
    """Deterministic fake logit: shared words plus a length term (so scores are not all integers)."""
    return len(set(query.lower().split()) & set(text.lower().split())) - len(text) / 97.0


class FakeTeacher:
    """Word-overlap teacher that records what it scored and can fail after ``fail_after`` calls."""

    def __init__(self, fingerprint: str = "fake-overlap-v1", fail_after: int | None = None):
        self.fingerprint = fingerprint
        self.fail_after = fail_after
        self.calls = 0
        self.queries: list[str] = []

    def score(self, pairs, batch_size=32, show_progress=False):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.queries.extend(q for q, _ in pairs)
        return np.array([overlap(q, t) for q, t in pairs], dtype=np.float32)


def run(out: Path, teacher: FakeTeacher, groups=GROUPS, flush_every: int = 1) -> list[TrainGroup]:
    return annotate(groups, QUERIES, CORPUS, teacher, out, batch_size=4, flush_every=flush_every,
                    show_progress=False)


def test_output_file_and_scores(tmp_path):
    out = tmp_path / "scores.jsonl"
    groups = run(out, FakeTeacher(), flush_every=4)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"format": "densekd.teacher_scores", "version": 1,
                                    "teacher": "fake-overlap-v1", "units": "logits"}
    assert [json.loads(x) for x in lines[1:]] == [g.to_json() for g in groups]
    for g, src in zip(groups, GROUPS):
        assert (g.qid, g.pos_ids, g.neg_ids) == (src.qid, src.pos_ids, src.neg_ids)
        assert list(g.teacher_scores) == g.pos_ids + g.neg_ids
        for pid, s in g.teacher_scores.items():
            text = src.extra_passages[pid] if src.extra_passages and pid in src.extra_passages \
                else CORPUS[pid].full_text()
            assert s == float(np.float32(overlap(QUERIES[g.qid].text, text)))
    header, loaded = load_annotations(out)
    assert header == make_header("fake-overlap-v1") and loaded == groups
    assert not Path(str(out) + ".partial").exists() and GROUPS[0].teacher_scores is None
    assert run(tmp_path / "empty.jsonl", FakeTeacher(), groups=[]) == []
    assert load_annotations(tmp_path / "empty.jsonl") == (make_header("fake-overlap-v1"), [])


def test_resume_after_crash_is_byte_identical(tmp_path):
    reference = tmp_path / "ref.jsonl"
    run(reference, FakeTeacher())
    out = tmp_path / "scores.jsonl"
    partial = Path(str(out) + ".partial")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(out, FakeTeacher(fail_after=2))
    assert not out.exists() and len(partial.read_text().splitlines()) == 3     # header + 2 queries
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"qid": "q3", "pos_ids": ["d3"], "neg_')                        # torn last line
    teacher = FakeTeacher()
    groups = run(out, teacher)
    assert out.read_bytes() == reference.read_bytes() and not partial.exists()
    assert sorted(set(teacher.queries)) == sorted(QUERIES[q].text for q in ("q3", "q4", "q5", "q6"))
    assert teacher.calls == 4 and [g.qid for g in groups] == [g.qid for g in GROUPS]


def test_complete_output_scores_nothing_and_other_teacher_rescores(tmp_path):
    out = tmp_path / "scores.jsonl"
    first = run(out, FakeTeacher(), flush_every=3)
    before = out.read_bytes()
    again = FakeTeacher()
    assert run(out, again) == first and again.calls == 0 and out.read_bytes() == before
    other = FakeTeacher(fingerprint="fake-overlap-v2")
    run(out, other)
    assert len(set(other.queries)) == len(GROUPS)
    assert load_annotations(out)[0]["teacher"] == "fake-overlap-v2"


def test_changed_or_new_groups_score_only_those(tmp_path):
    out = tmp_path / "scores.jsonl"
    run(out, FakeTeacher())
    changed = [TrainGroup(g.qid, g.pos_ids, g.neg_ids + ["d4"]) if g.qid == "q3" else g for g in GROUPS]
    teacher = FakeTeacher()
    groups = run(out, teacher, groups=changed)
    assert set(teacher.queries) == {QUERIES["q3"].text}
    assert groups[2].neg_ids == ["d1", "d4"] and "d4" in groups[2].teacher_scores
    assert load_annotations(out)[1] == groups


def test_partial_by_another_teacher_is_discarded(tmp_path):
    out = tmp_path / "scores.jsonl"
    with pytest.raises(RuntimeError):
        run(out, FakeTeacher(fingerprint="old", fail_after=3))
    teacher = FakeTeacher()
    run(out, teacher)
    assert teacher.calls == len(GROUPS) and load_annotations(out)[0]["teacher"] == "fake-overlap-v1"


def test_input_errors_fail_before_scoring(tmp_path):
    teacher = FakeTeacher()
    with pytest.raises(DataFormatError, match="nope"):
        run(tmp_path / "a.jsonl", teacher, groups=[TrainGroup("q1", ["d1"], ["nope"])])
    with pytest.raises(DataFormatError, match="duplicate qid"):
        run(tmp_path / "a.jsonl", teacher, groups=[GROUPS[0], GROUPS[0]])
    with pytest.raises(DataFormatError, match="not in the queries"):
        run(tmp_path / "a.jsonl", teacher, groups=[TrainGroup("q9", ["d1"])])
    assert teacher.calls == 0


def test_non_finite_teacher_output_is_refused(tmp_path):
    class NanTeacher(FakeTeacher):
        def score(self, pairs, batch_size=32, show_progress=False):
            return np.full(len(pairs), np.nan, dtype=np.float32)

    with pytest.raises(ValueError, match="non-finite"):
        run(tmp_path / "a.jsonl", NanTeacher())
    assert not (tmp_path / "a.jsonl").exists()


GOOD = '{"qid": "q1", "pos_ids": ["d1"], "neg_ids": ["d2"], "teacher_scores": {"d1": 1.5, "d2": -0.5}}'


@pytest.mark.parametrize(("lines", "bad_line", "message"), [
    ([GOOD], 1, "not a teacher-score file"),
    ([json.dumps({**make_header("t"), "version": 2})], 1, "unsupported version"),
    ([json.dumps({**make_header("t"), "units": "probabilities"})], 1, "units"),
    ([json.dumps(make_header("t")), GOOD, GOOD.replace('"d2": -0.5', '"d3": -0.5')], 3, "do not match"),
    ([json.dumps(make_header("t")), GOOD.replace("-0.5", "NaN")], 2, "non-finite"),
    ([json.dumps(make_header("t")), GOOD.replace("-0.5", "-Infinity")], 2, "non-finite"),
    ([json.dumps(make_header("t")), GOOD.replace("-0.5", '"x"')], 2, "not a number"),
    ([json.dumps(make_header("t")), GOOD, GOOD], 3, "duplicate qid"),
    ([json.dumps(make_header("t")), GOOD[:40], GOOD], 2, "malformed JSON"),
    ([json.dumps(make_header("t")), GOOD.replace('"teacher_scores"', '"scores"')], 2, "teacher_scores"),
])
def test_bad_files_name_file_and_line(tmp_path, lines, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message) as err:
        load_annotations(path)
    assert f"{path}:{bad_line}:" in str(err.value)
