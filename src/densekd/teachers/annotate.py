"""Offline teacher annotation: score every (query, candidate) pair of each TrainGroup once, to a file.

File format (JSON lines, UTF-8, one object per line)
----------------------------------------------------
* line 1, the header::

    {"format": "densekd.teacher_scores", "version": 1, "teacher": "<teacher fingerprint>", "units": "logits"}

* then one :meth:`TrainGroup.to_json` per query::

    {"qid": str, "pos_ids": [str], "neg_ids": [str], "teacher_scores": {pid: float},
     "extra_passages": {pid: text}}        # extra_passages only for synthetic candidates

  ``teacher_scores`` holds exactly one **raw teacher logit** (never a probability; losses apply their
  own softmax and temperature) for every id of ``pos_ids + neg_ids``, all finite. Qids are unique.

Each group is one :class:`~densekd.teachers.base.CandidateList` for the teacher: the query's text and
its candidates, ``extra_passages[pid]`` (a text) for synthetic ids and the corpus
:class:`~densekd.data.types.Passage` otherwise (a pair-reading teacher scores
``(queries[qid].text, corpus[pid].full_text())``), and, when ``answers`` are given, the query's answer
(read only by answer-conditioned teachers, e.g. a FiD reader's ``fid-kd`` scoring). A label-free
teacher's groups (a reader scoring retrieved passages) have an empty ``pos_ids`` and list every
candidate in ``neg_ids``, in retrieval order (label-free groups, :mod:`densekd.data.types`).

Resuming and caching
--------------------
Scores go to ``out_path + ".partial"`` (header first), ``flush_every`` queries at a time, each flush
ending on a complete line and fsync'ed. A rerun after a crash reads that file, drops a trailing torn
line, and scores only the queries not yet there; when all are done the file is renamed onto
``out_path`` (or, if it does not hold exactly the input groups in input order, ``out_path`` is written
atomically from the collected lines). A finished ``out_path`` by the same teacher fingerprint is reused
the same way: if it covers every group, nothing is scored and the file is left untouched.

A stored query counts as done only when its ``pos_ids``, ``neg_ids`` and ``extra_passages`` equal the
input group's; the cache key is ``(teacher fingerprint, qid, candidate ids)``, so texts (and answers) are
assumed fixed for a given id (the pipeline's step cache keys cover changed data). Resumed output is
byte-identical to an uninterrupted run as long as the teacher scores a pair the same way whatever
else is in its batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, atomic_write, get_field, iter_jsonl
from densekd.data.types import Corpus, Queries, TrainGroup
from densekd.teachers.base import Candidate, CandidateList, Teacher, as_teacher

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "annotate", "load_annotations", "make_header"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "densekd.teacher_scores"
FORMAT_VERSION = 1
UNITS = "logits"
PARTIAL_SUFFIX = ".partial"


def make_header(fingerprint: str) -> dict[str, Any]:
    """The header object of a file written by ``fingerprint``."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "teacher": fingerprint, "units": UNITS}


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


# --- reading ---------------------------------------------------------------------------------------

def _check_header(header: dict[str, Any], path: str | os.PathLike, line: int) -> None:
    if header.get("format") != FORMAT_NAME:
        raise DataFormatError(path, f"not a teacher-score file: the first line must be a header with "
                                    f"\"format\": {FORMAT_NAME!r}", line)
    if header.get("version") != FORMAT_VERSION:
        raise DataFormatError(path, f"unsupported version {header.get('version')!r} "
                                    f"(this densekd reads version {FORMAT_VERSION})", line)
    if header.get("units") != UNITS:
        raise DataFormatError(path, f"units must be {UNITS!r}, got {header.get('units')!r}", line)
    if not isinstance(header.get("teacher"), str):
        raise DataFormatError(path, "header field 'teacher' (the fingerprint) must be a string", line)


def _parse_group(row: dict[str, Any], path: str | os.PathLike, line: int) -> TrainGroup:
    """One annotated group, with scores for exactly its candidates, all finite numbers."""
    pos = get_field(row, "pos_ids", path, line, types=list)
    neg = get_field(row, "neg_ids", path, line, types=list, required=False, default=[])
    scores = get_field(row, "teacher_scores", path, line, types=dict)
    bad = [k for k, v in scores.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise DataFormatError(path, f"teacher score of {bad[0]!r} is not a number", line)
    nonfinite = [k for k, v in scores.items() if not math.isfinite(v)]
    if nonfinite:
        raise DataFormatError(path, f"non-finite teacher score for {nonfinite[:3]}", line)
    ids = {str(x) for x in pos + neg}
    if set(scores) != ids:
        missing, extra = sorted(ids - set(scores)), sorted(set(scores) - ids)
        raise DataFormatError(path, f"teacher_scores do not match the candidate ids "
                                    f"(missing {missing[:3]}, unexpected {extra[:3]})", line)
    try:
        return TrainGroup.from_json(row)
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(path, f"bad group: {e}", line) from None


def load_annotations(path: str | os.PathLike) -> tuple[dict[str, Any], list[TrainGroup]]:
    """Read a teacher-score file written by :func:`annotate`.

    Parameters
    ----------
    path
        A ``densekd.teacher_scores`` JSON-lines file (format in the module docstring).

    Returns
    -------
    header, groups
        The header dict (``teacher`` is the fingerprint) and the groups in file order.

    Raises
    ------
    DataFormatError
        Naming the file and line: missing or wrong header, malformed JSON, scores that do not match
        the candidate ids, non-numeric/NaN/inf scores, duplicate qids.
    """
    rows = iter_jsonl(path)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(path, "empty file: expected a teacher-score header line")
    _check_header(first[1], path, first[0])
    groups: list[TrainGroup] = []
    seen: set[str] = set()
    for lineno, row in rows:
        group = _parse_group(row, path, lineno)
        if group.qid in seen:
            raise DataFormatError(path, f"duplicate qid {group.qid!r}", lineno)
        seen.add(group.qid)
        groups.append(group)
    return first[1], groups


def _read_partial(path: Path, header: dict[str, Any]) -> list[TrainGroup] | None:
    """Complete groups of a partial file in file order; ``None`` when absent, empty or by another teacher.

    A torn last line (no final newline) is cut off the file itself, so that appending continues on a
    line boundary.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        logger.info("%s: dropping a torn last line (%d bytes)", path, len(data) - len(complete))
        os.truncate(path, len(complete))
    if not complete:
        return None
    first, _, _ = complete.partition(b"\n")
    try:
        found = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataFormatError(path, "malformed header line", 1) from None
    if found != header:
        logger.warning("%s was written by teacher %r, not %r: starting over", path,
                       found.get("teacher") if isinstance(found, dict) else None, header["teacher"])
        return None
    # Not load_annotations: a query re-scored after its candidates changed appears twice (last wins).
    return [_parse_group(row, path, lineno) for lineno, row in list(iter_jsonl(path))[1:]]


def _load_finished(path: Path, header: dict[str, Any]) -> dict[str, TrainGroup] | None:
    """Groups of a finished file by the same teacher; ``None`` when absent or by another teacher."""
    if not path.exists():
        return None
    found, groups = load_annotations(path)
    if found != header:
        logger.info("%s was written by teacher %r: re-scoring with %r", path, found["teacher"],
                    header["teacher"])
        return None
    return {g.qid: g for g in groups}


# --- scoring ---------------------------------------------------------------------------------------

def _same_candidates(a: TrainGroup, b: TrainGroup) -> bool:
    return (a.pos_ids == b.pos_ids and a.neg_ids == b.neg_ids
            and (a.extra_passages or None) == (b.extra_passages or None))


def _candidate(group: TrainGroup, pid: str, corpus: Corpus) -> Candidate:
    extra = group.extra_passages or {}
    return extra[pid] if pid in extra else corpus[pid]


def _check_inputs(groups: Sequence[TrainGroup], queries: Queries, corpus: Corpus) -> None:
    """Fail before any (slow) scoring if a text is missing or qids repeat (they key the resume)."""
    seen: set[str] = set()
    for g in groups:
        if g.qid in seen:
            raise DataFormatError(None, f"duplicate qid {g.qid!r} in the groups to annotate")
        seen.add(g.qid)
        if not g.pos_ids + g.neg_ids:  # no positive is fine: a label-free teacher scores unlabelled lists
            raise DataFormatError(None, f"query {g.qid!r}: no candidate passage")
        if g.qid not in queries:
            raise DataFormatError(None, f"query {g.qid!r} is not in the queries")
        extra = g.extra_passages or {}
        missing = [p for p in g.pos_ids + g.neg_ids if p not in extra and p not in corpus]
        if missing:
            raise DataFormatError(None, f"query {g.qid!r}: passages {missing[:3]} are neither in the "
                                        "corpus nor in extra_passages")


def _score_chunk(chunk: Sequence[TrainGroup], queries: Queries, corpus: Corpus,
                 teacher: Teacher, batch_size: int, answers: Mapping[str, str] | None = None) -> list[TrainGroup]:
    """Score all candidates of ``chunk`` in one teacher call; return annotated copies."""
    ids_per_group = [list(dict.fromkeys(g.pos_ids + g.neg_ids)) for g in chunk]
    lists = [CandidateList(queries[g.qid].text, [_candidate(g, pid, corpus) for pid in ids],
                           None if answers is None else answers.get(g.qid))
             for g, ids in zip(chunk, ids_per_group)]
    scored = teacher.score_candidates(lists, batch_size=batch_size, show_progress=False)
    if len(scored) != len(chunk):
        raise ValueError(f"teacher returned {len(scored)} score lists for {len(chunk)} queries")
    out = []
    for g, ids, raw in zip(chunk, ids_per_group, scored):
        raw = np.asarray(raw)
        if raw.shape != (len(ids),):
            raise ValueError(f"teacher returned shape {raw.shape} for {len(ids)} candidates of query {g.qid!r}")
        if not np.isfinite(raw).all():
            raise ValueError(f"teacher {teacher.fingerprint!r} returned non-finite scores")
        # float32 -> float64 is exact, so the JSON text round-trips to the same logits.
        scores = dict(zip(ids, raw.astype(np.float64).tolist()))
        out.append(TrainGroup(g.qid, list(g.pos_ids), list(g.neg_ids), scores,
                              dict(g.extra_passages) if g.extra_passages else None))
    return out


def _score_to_partial(partial: Path, header: dict[str, Any] | None, todo: Sequence[TrainGroup],
                      queries: Queries, corpus: Corpus, teacher: Teacher, batch_size: int,
                      flush_every: int, answers: Mapping[str, str] | None) -> Iterator[list[TrainGroup]]:
    """Score ``todo`` in chunks, appending each to ``partial`` (started afresh with ``header`` if given)."""
    with open(partial, "w" if header is not None else "a", encoding="utf-8") as f:
        if header is not None:
            f.write(_line(header))
        for start in range(0, len(todo), flush_every):
            chunk = _score_chunk(todo[start:start + flush_every], queries, corpus, teacher, batch_size, answers)
            f.write("".join(_line(g.to_json()) for g in chunk))
            # fsync per chunk: the partial file must survive a crash for the resume to be worth it.
            f.flush()
            os.fsync(f.fileno())
            yield chunk


def _finalize(partial: Path, out: Path, header: dict[str, Any], order: list[str],
              written: list[str], done: dict[str, TrainGroup]) -> None:
    """Move the finished partial file onto ``out``, or write ``out`` in input order if it differs."""
    if written == order:
        os.replace(partial, out)
        return
    with atomic_write(out) as f:
        f.write(_line(header))
        for qid in order:
            f.write(_line(done[qid].to_json()))
    partial.unlink(missing_ok=True)


def annotate(groups: Sequence[TrainGroup], queries: Queries, corpus: Corpus, teacher: Teacher,
             out_path: str | os.PathLike, batch_size: int = 64, flush_every: int = 100,
             show_progress: bool = True, answers: Mapping[str, str] | None = None) -> list[TrainGroup]:
    """Attach raw teacher logits to every candidate of every group; resumable (see module docstring).

    Parameters
    ----------
    groups
        Groups to annotate (unique qids); existing ``teacher_scores`` are replaced.
    queries, corpus
        Texts for the qids and the non-synthetic passage ids.
    teacher
        A :class:`~densekd.teachers.base.Teacher` (``score_candidates`` raw logits and a
        ``fingerprint`` that changes whenever its scores would): a cross-encoder, ColBERT or reader
        teacher, or a pair scorer (``score(pairs)``, :func:`~densekd.teachers.base.as_teacher`).
    out_path
        Destination file; ``out_path + ".partial"`` holds the work in progress.
    batch_size
        Passed to ``teacher.score``.
    flush_every
        Queries per teacher call and per flush: a crash loses at most this many queries' work.
    show_progress
        tqdm bar over queries.
    answers
        ``qid -> answer`` handed to the teacher with each query's candidates (answer-conditioned
        teachers only; others ignore it). Not part of the resume key: fixed per qid, like the texts.

    Returns
    -------
    list[TrainGroup]
        Annotated copies of ``groups``, in input order.
    """
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    _check_inputs(groups, queries, corpus)
    teacher = as_teacher(teacher)
    out, header = Path(out_path), make_header(teacher.fingerprint)
    partial = Path(str(out) + PARTIAL_SUFFIX)
    order = [g.qid for g in groups]
    finished = _load_finished(out, header)
    if finished is not None and all(q in finished and _same_candidates(finished[q], g)
                                    for q, g in zip(order, groups)):
        logger.info("%s already holds scores by %r for all %d queries", out, teacher.fingerprint, len(order))
        return [finished[q] for q in order]
    done = finished or {}
    resumed = _read_partial(partial, header)
    written = [g.qid for g in resumed or []]
    done.update({g.qid: g for g in resumed or []})
    by_qid = {g.qid: g for g in groups}
    done = {q: g for q, g in done.items() if q in by_qid and _same_candidates(g, by_qid[q])}
    todo = [g for g in groups if g.qid not in done]
    logger.info("annotating %d queries with %r (%d already done)", len(todo), teacher.fingerprint,
                len(order) - len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(order), initial=len(order) - len(todo), disable=not show_progress,
              desc="annotate", unit="query") as bar:
        for chunk in _score_to_partial(partial, header if resumed is None else None, todo, queries, corpus,
                                       teacher, batch_size, flush_every, answers):
            done.update({g.qid: g for g in chunk})
            written.extend(g.qid for g in chunk)
            bar.update(len(chunk))
    _finalize(partial, out, header, order, written, done)
    return [done[q] for q in order]
