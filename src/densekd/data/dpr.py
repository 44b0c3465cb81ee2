"""Read and write DPR training json and the DPR Wikipedia passage file.

File formats (data contract)
----------------------------
DPR json (``biencoder-nq-train.json`` style)
    One JSON array of objects ``{"question": str, "answers": [str] (optional), "positive_ctxs": [ctx],
    "negative_ctxs": [ctx] (optional), "hard_negative_ctxs": [ctx] (optional)}``, with
    ``ctx = {"title": str (optional), "text": str, "passage_id" | "psg_id" | "id": str | int (optional)}``.
    A ctx without an id gets ``stable_id(title, text, prefix="p")``; a question gets the item's
    ``qid`` / ``query_id`` / ``id`` when present, else ``stable_id(question, prefix="q")`` (``-2``, ``-3``
    ... appended when a question repeats). Each item with positives becomes one :class:`TrainGroup`:
    ``neg_ids`` = the chosen negative lists in order, without repeats or positives. Items without
    positives keep their query (useful for QA evaluation) but give no group. A passage id seen twice
    with different text keeps its first text and logs a warning (DPR's gold NQ contexts can differ
    from ``psgs_w100`` by a few characters).
``psgs_w100.tsv``
    ``id<TAB>text<TAB>title`` with the header ``id text title``. Fields are CSV-quoted when they start
    with ``"`` (inner quotes doubled), as DPR's own file does for every text.

The json is read whole (like DPR's own loader) but parsed item by item, so errors name the file and
the line of the offending item. Writers are atomic; TSV fields holding tabs or line breaks are
rejected rather than escaped. ``teacher_scores`` and ``extra_passages`` of groups have no place in DPR
json and are not written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from densekd.data.io import (
    DataFormatError, atomic_write, check_tsv_value, collect_passages, get_field, get_id, iter_lines, normalize_id,
    require_file, stable_id, write_json,
)
from densekd.data.types import Corpus, Passage, Queries, Query, TrainGroup

logger = logging.getLogger(__name__)

PSGS_HEADER = ("id", "text", "title")
_JSON_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class DprData:
    """A DPR json file as records: queries, every passage it names, and one group per answerable item."""

    queries: Queries
    corpus: Corpus
    groups: list[TrainGroup]


def iter_json_array(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, item)`` for each element of a file holding one JSON array.

    ``line`` is where the element starts, so callers can point at the item that breaks a rule.
    """
    p = require_file(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(p, f"invalid UTF-8 ({e.reason} at byte {e.start})", line) from None
    del data
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        # Positions only move forward, so count newlines incrementally (linear in the file size).
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    pos = _JSON_WS.match(text, 0).end()
    if not text.startswith("[", pos):
        raise DataFormatError(p, "expected a JSON array", line_at(pos))
    pos = _JSON_WS.match(text, pos + 1).end()
    closed = text.startswith("]", pos)
    pos += closed
    while not closed:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataFormatError(p, f"malformed JSON ({e.msg})", e.lineno) from None
        yield line_at(pos), item
        pos = _JSON_WS.match(text, end).end()
        if not text.startswith((",", "]"), pos):
            raise DataFormatError(p, "malformed JSON (expected ',' or ']' after an item)", line_at(pos))
        closed = text[pos] == "]"
        pos = _JSON_WS.match(text, pos + 1).end()
    pos = _JSON_WS.match(text, pos).end()
    if pos != len(text):
        raise DataFormatError(p, "malformed JSON (extra data after the array)", line_at(pos))


def _read_ctx(ctx: Any, path: str | os.PathLike, line: int, where: str) -> Passage:
    if not isinstance(ctx, dict):
        raise DataFormatError(path, f"{where}: expected a ctx object, got {type(ctx).__name__}", line)
    text = get_field(ctx, "text", path, line)
    if not text.strip():
        raise DataFormatError(path, f"{where}: empty passage text", line)
    title = get_field(ctx, "title", path, line, required=False, default="")
    pid = get_id(ctx, ("passage_id", "psg_id", "id"), path, line, required=False)
    return Passage(id=pid or stable_id(title, text, prefix="p"), text=text, title=title)


def _read_query(item: dict, path: str | os.PathLike, line: int, queries: Queries) -> Query:
    question = get_field(item, "question", path, line)
    if not question.strip():
        raise DataFormatError(path, "empty question", line)
    answers = get_field(item, "answers", path, line, types=list, required=False)
    if answers is not None and not all(isinstance(a, str) for a in answers):
        raise DataFormatError(path, "'answers' must be a list of strings", line)
    qid = get_id(item, ("qid", "query_id", "id"), path, line, required=False)
    if qid is not None and qid in queries:
        raise DataFormatError(path, f"duplicate query id {qid!r}", line)
    if qid is None:
        base = qid = stable_id(question, prefix="q")
        n = 1
        while qid in queries:  # the same question asked twice: keep both, deterministically
            n += 1
            qid = f"{base}-{n}"
    return Query(id=qid, text=question, answers=answers)


def load_dpr(path: str | os.PathLike,
             negatives: tuple[str, ...] = ("hard_negative_ctxs", "negative_ctxs")) -> DprData:
    """Load a DPR training json.

    Parameters
    ----------
    path
        The json file (one array of items).
    negatives
        Which ctx lists feed ``neg_ids``, in this order; e.g. ``("hard_negative_ctxs",)`` for
        BM25 hard negatives only.

    Returns
    -------
    DprData
    """
    queries: Queries = {}
    corpus: Corpus = {}
    groups: list[TrainGroup] = []
    conflicts = 0
    for line, item in iter_json_array(path):
        if not isinstance(item, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(item).__name__}", line)
        query = _read_query(item, path, line, queries)
        queries[query.id] = query
        lists: dict[str, list[str]] = {}
        for key in ("positive_ctxs", *negatives):
            ctxs = get_field(item, key, path, line, types=list, required=key == "positive_ctxs", default=[])
            lists[key] = []
            for i, ctx in enumerate(ctxs):
                passage = _read_ctx(ctx, path, line, f"{key}[{i}]")
                known = corpus.setdefault(passage.id, passage)
                conflicts += (known.text, known.title) != (passage.text, passage.title)
                lists[key].append(passage.id)
        pos = list(dict.fromkeys(lists["positive_ctxs"]))
        if pos:
            neg = dict.fromkeys(pid for key in negatives for pid in lists[key] if pid not in pos)
            groups.append(TrainGroup(qid=query.id, pos_ids=pos, neg_ids=list(neg)))
    if conflicts:
        logger.warning("%s: %d ctxs reuse a passage id with different text; kept the first text",
                       path, conflicts)
    return DprData(queries=queries, corpus=corpus, groups=groups)


def write_dpr(path: str | os.PathLike, data: DprData) -> int:
    """Atomically write ``data`` as DPR json; returns the number of items.

    Negatives go to ``hard_negative_ctxs``. Every query is written (those without a group with no
    positives), and its id as ``qid`` so that loading the file gives the same ids back.
    """
    by_qid: dict[str, TrainGroup] = {}
    for g in data.groups:
        if g.qid in by_qid:
            raise DataFormatError(path, f"two groups for query {g.qid!r}: DPR json has one item per question")
        by_qid[g.qid] = g

    def ctx(pid: str) -> dict[str, str]:
        p = data.corpus[pid]
        return {"title": p.title, "text": p.text, "passage_id": p.id}

    items = []
    for q in data.queries.values():
        g = by_qid.get(q.id)
        items.append({
            "qid": q.id, "question": q.text, "answers": q.answers if q.answers is not None else [],
            "positive_ctxs": [ctx(p) for p in g.pos_ids] if g else [],
            "negative_ctxs": [],
            "hard_negative_ctxs": [ctx(n) for n in g.neg_ids] if g else [],
        })
    write_json(path, items)
    return len(items)


def _unquote(field: str) -> str:
    # CSV quoting as written by DPR: "..." with inner quotes doubled.
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def _quote(field: str, always: bool = False) -> str:
    # Unquoted fields are read literally, so only a leading quote forces quoting.
    if always or field.startswith('"'):
        return '"' + field.replace('"', '""') + '"'
    return field


def _split_psgs_line(text: str, path: str | os.PathLike, line: int) -> list[str]:
    fields = text.split("\t")
    if len(fields) == 3:
        return [_unquote(f) for f in fields]
    if '"' in text:  # a quoted text may hold a tab; only then is the slower csv parse needed
        fields = next(csv.reader([text], delimiter="\t"))
    if len(fields) != 3:
        raise DataFormatError(path, f"expected 3 tab-separated fields 'id text title', got {len(fields)}",
                              line)
    return fields


def _iter_psgs_lines(path: str | os.PathLike) -> Iterator[tuple[int, Passage]]:
    for n, (line, text) in enumerate(iter_lines(path)):
        fields = _split_psgs_line(text, path, line)
        if n == 0 and tuple(fields) == PSGS_HEADER:
            continue
        pid, body, title = normalize_id(fields[0], path, line, "passage id"), fields[1], fields[2]
        if not body.strip():
            raise DataFormatError(path, f"passage {pid!r} has empty text", line)
        yield line, Passage(id=pid, text=body, title=title)


def iter_psgs(path: str | os.PathLike) -> Iterator[Passage]:
    """Stream ``psgs_w100.tsv`` passages in file order (21M rows: duplicate ids are not checked)."""
    for _, passage in _iter_psgs_lines(path):
        yield passage


def load_psgs(path: str | os.PathLike) -> Corpus:
    """Load a ``psgs_w100.tsv``-format file into a :data:`Corpus`, rejecting duplicate ids."""
    return collect_passages(path, _iter_psgs_lines(path))


def write_psgs(path: str | os.PathLike, passages: Corpus | Iterable[Passage]) -> int:
    """Atomically write ``id<TAB>text<TAB>title`` with header, quoting every text as DPR does."""
    items = passages.values() if isinstance(passages, dict) else passages
    n = 0
    with atomic_write(path) as f:
        f.write("\t".join(PSGS_HEADER) + "\n")
        for p in items:
            check_tsv_value(p.id, path, "passage id")
            check_tsv_value(p.text, path, "passage text")
            if p.title:  # an empty title is legal here
                check_tsv_value(p.title, path, "passage title")
            f.write(f"{_quote(p.id)}\t{_quote(p.text, always=True)}\t{_quote(p.title)}\n")
            n += 1
    return n
