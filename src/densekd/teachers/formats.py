"""Import/export of teacher-scored training files from FlagEmbedding and Tevatron.

FlagEmbedding (BGE fine-tuning) JSON lines
------------------------------------------
``{"query": str, "pos": [text], "neg": [text], "pos_scores": [float], "neg_scores": [float],
"prompt": str, "type": str}``: ``pos_scores[i]`` belongs to ``pos[i]`` (same for ``neg``); scores are
raw teacher logits (the BGE reranker's) and are both present or both absent; ``neg`` may be empty.

* Passages carry no ids, so each text becomes a :class:`Passage` with id ``"fe-" + sha1(text)[:16]``
  (stable across files and machines; equal texts share an id) and an empty title.
* A query's id is ``"feq-" + sha1(query)[:16]``; the k-th repeat of the same query text in one file gets
  ``"-k"`` appended (k >= 2) so that every line stays its own group.
* Within a line, a repeated text is kept once (first occurrence and its score) and a negative equal
  to a positive is dropped; both are logged, since they would be duplicate or contradictory
  candidates in training.
* ``prompt`` (the query instruction) and ``type`` have no place in densekd's records and are ignored;
  instructions are a model setting here.

Export writes ``query``, ``pos``, ``neg`` (:meth:`Passage.full_text`, or ``extra_passages`` text
for synthetic ids) and, for groups with teacher scores, ``pos_scores``/``neg_scores``. Import after
export gives back identical groups, queries and passages (ids being content hashes).

Tevatron JSON lines
-------------------
``{"query_id": str|int, "query": str, "positive_passages": [{"docid", "title", "text", "score"}],
"negative_passages": [...], "answers": [str]}``: ``title`` may be absent (empty), ``answers`` is
optional (QA sets). Teacher scores (raw logits) are read from and written to the per-passage field
``score_field`` (default ``"score"``); every passage of a line has it or none does. Pass
``score_field=None`` to ignore a ``score`` that holds something else (e.g. a BM25 score). A docid
repeated across lines must carry the same title and text. Synthetic passages are exported like corpus
passages and come back as corpus passages.

All loaders raise :class:`~densekd.data.io.DataFormatError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from densekd.data.io import DataFormatError, get_field, get_id, iter_jsonl, write_jsonl
from densekd.data.types import Corpus, Passage, Queries, Query, TrainGroup

__all__ = ["flagembedding_passage_id", "load_flagembedding", "load_tevatron", "write_flagembedding",
           "write_tevatron"]

logger = logging.getLogger(__name__)

Loaded = tuple[Queries, Corpus, list[TrainGroup]]


def _sha1_16(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def flagembedding_passage_id(text: str) -> str:
    """The id a FlagEmbedding passage text gets on import."""
    return "fe-" + _sha1_16(text)


def _number(value: Any, path: str | os.PathLike, line: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataFormatError(path, f"{what} must be a number, got {value!r}", line)
    if not math.isfinite(value):
        raise DataFormatError(path, f"{what} must be finite, got {value!r}", line)
    return float(value)


def _build_group(qid: str, pos: list[tuple[str, float | None]], neg: list[tuple[str, float | None]],
                 path: str | os.PathLike, line: int) -> TrainGroup:
    """A group from ``(pid, score)`` lists: repeats keep their first occurrence, pos wins over neg."""
    scores: dict[str, float | None] = {}
    pos_ids, neg_ids, dropped = [], [], 0
    for ids, items in ((pos_ids, pos), (neg_ids, neg)):
        for pid, score in items:
            if pid in scores:
                dropped += 1
                continue
            scores[pid] = score
            ids.append(pid)
    if dropped:
        logger.info("%s:%d: dropped %d repeated passage(s) of query %r", path, line, dropped, qid)
    has_scores = next(iter(scores.values())) is not None
    return TrainGroup(qid, pos_ids, neg_ids, dict(scores) if has_scores else None)  # type: ignore[arg-type]


def _passage_text(group: TrainGroup, pid: str, corpus: Corpus, path: str | os.PathLike) -> Passage:
    """The passage behind ``pid``: corpus entry, or a title-less one for synthetic texts."""
    if group.extra_passages and pid in group.extra_passages:
        return Passage(pid, group.extra_passages[pid])
    if pid not in corpus:
        raise DataFormatError(path, f"query {group.qid!r}: passage {pid!r} is not in the corpus")
    return corpus[pid]


def _query_text(group: TrainGroup, queries: Queries, path: str | os.PathLike) -> Query:
    if group.qid not in queries:
        raise DataFormatError(path, f"query {group.qid!r} is not in the queries")
    return queries[group.qid]


# --- FlagEmbedding -----------------------------------------------------------------------------------

def _fe_side(row: dict[str, Any], key: str, path: str | os.PathLike, line: int,
             required: bool) -> tuple[list[str], list[float] | None]:
    texts = get_field(row, key, path, line, types=list, required=required, default=[])
    if any(not isinstance(t, str) for t in texts):
        raise DataFormatError(path, f"field {key!r} must be a list of strings", line)
    scores = get_field(row, f"{key}_scores", path, line, types=list, required=False)
    if scores is None:
        return texts, None
    if len(scores) != len(texts):
        raise DataFormatError(path, f"{key}_scores has {len(scores)} scores for {len(texts)} {key} "
                                    "texts", line)
    return texts, [_number(s, path, line, f"{key}_scores[{i}]") for i, s in enumerate(scores)]


def load_flagembedding(path: str | os.PathLike) -> Loaded:
    """Read a FlagEmbedding training file (format in the module docstring).

    Returns
    -------
    queries, corpus, groups
        One group per line in file order; ``teacher_scores`` set when the line has scores.
    """
    queries: Queries = {}
    corpus: Corpus = {}
    groups: list[TrainGroup] = []
    repeats: dict[str, int] = {}
    for line, row in iter_jsonl(path):
        text = get_field(row, "query", path, line)
        pos, pos_scores = _fe_side(row, "pos", path, line, required=True)
        neg, neg_scores = _fe_side(row, "neg", path, line, required=False)
        if not pos:
            raise DataFormatError(path, "field 'pos' is empty: a group needs a positive", line)
        if (pos_scores is None) != (neg_scores is None) and neg:
            raise DataFormatError(path, "pos_scores and neg_scores must be both present or both absent",
                                  line)
        qid = "feq-" + _sha1_16(text)
        repeats[qid] = repeats.get(qid, 0) + 1
        if repeats[qid] > 1:
            qid = f"{qid}-{repeats[qid]}"
        queries[qid] = Query(qid, text)
        for t in pos + neg:
            pid = flagembedding_passage_id(t)
            corpus.setdefault(pid, Passage(pid, t))
        pairs = [list(zip(map(flagembedding_passage_id, texts), s or [None] * len(texts)))
                 for texts, s in ((pos, pos_scores), (neg, neg_scores))]
        groups.append(_build_group(qid, pairs[0], pairs[1], path, line))
    return queries, corpus, groups


def write_flagembedding(path: str | os.PathLike, groups: Iterable[TrainGroup], queries: Queries,
                        corpus: Corpus) -> int:
    """Write groups as a FlagEmbedding training file (atomically); returns the number of lines."""
    def rows() -> Iterable[dict[str, Any]]:
        for g in groups:
            row: dict[str, Any] = {"query": _query_text(g, queries, path).text}
            row["pos"] = [_passage_text(g, p, corpus, path).full_text() for p in g.pos_ids]
            row["neg"] = [_passage_text(g, p, corpus, path).full_text() for p in g.neg_ids]
            if g.teacher_scores is not None:
                row["pos_scores"] = [g.teacher_scores[p] for p in g.pos_ids]
                row["neg_scores"] = [g.teacher_scores[p] for p in g.neg_ids]
            yield row
    return write_jsonl(path, rows())


# --- Tevatron ----------------------------------------------------------------------------------------

def _tev_passages(row: dict[str, Any], key: str, path: str | os.PathLike, line: int, corpus: Corpus,
                  score_field: str | None) -> list[tuple[str, float | None]]:
    items = get_field(row, key, path, line, types=list, required=key == "positive_passages", default=[])
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataFormatError(path, f"{key}[{i}] must be an object", line)
        pid = get_id(item, "docid", path, line)
        passage = Passage(pid, get_field(item, "text", path, line),
                          get_field(item, "title", path, line, required=False, default=""))
        known = corpus.setdefault(pid, passage)
        if known != passage:
            raise DataFormatError(path, f"docid {pid!r} has a different title/text than on an earlier "
                                        "line", line)
        score = None
        if score_field is not None and item.get(score_field) is not None:
            score = _number(item[score_field], path, line, f"{key}[{i}].{score_field}")
        out.append((pid, score))
    return out


def load_tevatron(path: str | os.PathLike, score_field: str | None = "score") -> Loaded:
    """Read a Tevatron training file (format in the module docstring).

    Parameters
    ----------
    path
        JSON-lines file.
    score_field
        Per-passage field holding raw teacher logits; ``None`` ignores scores.

    Returns
    -------
    queries, corpus, groups
        One group per line in file order.
    """
    queries: Queries = {}
    corpus: Corpus = {}
    groups: list[TrainGroup] = []
    for line, row in iter_jsonl(path):
        qid = get_id(row, "query_id", path, line)
        if qid in queries:
            raise DataFormatError(path, f"duplicate query_id {qid!r}", line)
        answers = get_field(row, "answers", path, line, types=list, required=False)
        if answers is not None and any(not isinstance(a, str) for a in answers):
            raise DataFormatError(path, "field 'answers' must be a list of strings", line)
        queries[qid] = Query(qid, get_field(row, "query", path, line), answers)
        pos = _tev_passages(row, "positive_passages", path, line, corpus, score_field)
        neg = _tev_passages(row, "negative_passages", path, line, corpus, score_field)
        if not pos:
            raise DataFormatError(path, "field 'positive_passages' is empty: a group needs a positive", line)
        if len({s is None for _, s in pos + neg}) > 1:
            raise DataFormatError(path, f"some passages have {score_field!r} and others not", line)
        groups.append(_build_group(qid, pos, neg, path, line))
    return queries, corpus, groups


def write_tevatron(path: str | os.PathLike, groups: Iterable[TrainGroup], queries: Queries,
                   corpus: Corpus, score_field: str = "score") -> int:
    """Write groups as a Tevatron training file (atomically); returns the number of lines.

    Teacher scores go to ``score_field`` of each passage, for groups that have them.
    """
    def passages(g: TrainGroup, ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for pid in ids:
            p = _passage_text(g, pid, corpus, path)
            item: dict[str, Any] = {"docid": pid, "title": p.title, "text": p.text}
            if g.teacher_scores is not None:
                item[score_field] = g.teacher_scores[pid]
            out.append(item)
        return out

    def rows() -> Iterable[dict[str, Any]]:
        for g in groups:
            q = _query_text(g, queries, path)
            row: dict[str, Any] = {"query_id": g.qid, "query": q.text,
                                   "positive_passages": passages(g, g.pos_ids),
                                   "negative_passages": passages(g, g.neg_ids)}
            if q.answers is not None:
                row["answers"] = q.answers
            yield row
    return write_jsonl(path, rows())
