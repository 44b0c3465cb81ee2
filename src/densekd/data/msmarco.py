"""Read and write the MS MARCO passage-ranking file formats.

File formats (data contract)
----------------------------
``collection.tsv``
    ``pid<TAB>text``, no header; an optional third column ``title`` is read and written (MS MARCO v1
    has none; title-augmented variants do). ``text`` must be non-blank; pids unique.
``queries.tsv``
    ``qid<TAB>text``, no header; text non-blank, qids unique. The format has no answers column, so
    :attr:`Query.answers` is not written.
qrels (TREC style)
    ``qid 0 pid rel``: four fields separated by any whitespace (spaces or tabs); the second field is
    the unused TREC iteration; ``rel`` is an integer.
triples
    ``a<TAB>b<TAB>c``: either texts (``query, positive, negative``: ``triples.train.small.tsv``) or ids
    (``qid, pos_pid, neg_pid``: ``qidpidtriples.train.full.tsv``). Id triples become one
    :class:`TrainGroup` per query (positives and negatives in first-seen order, without repeats);
    text triples get content-hash ids (:func:`~densekd.data.io.stable_id`).

TSV writers reject fields holding a tab or a line break instead of escaping them, because other
tools read these files with a plain split and would not unescape. Ids go through
:func:`~densekd.data.io.normalize_id` (surrounding whitespace stripped). Every read error raises
:class:`~densekd.data.io.DataFormatError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from densekd.data.beir import add_judgement
from densekd.data.io import (
    DataFormatError, atomic_write, check_token, check_tsv_value, collect_passages, iter_lines, iter_tsv, normalize_id,
    parse_int, stable_id,
)
from densekd.data.types import Corpus, Passage, Qrels, Queries, Query, TrainGroup


@dataclass
class TriplesData:
    """Text triples turned into records: queries and passages keyed by content-hash ids, and groups."""

    queries: Queries
    corpus: Corpus
    groups: list[TrainGroup]


def _nonblank(text: str, path: str | os.PathLike, line: int, what: str) -> str:
    if not text.strip():
        raise DataFormatError(path, f"empty {what}", line)
    return text


def _write_tsv(path: str | os.PathLike, rows: Iterable[tuple[str, ...]], names: tuple[str, ...],
               optional: int = 0) -> int:
    # ``optional`` trailing columns may be left out (the collection's title).
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            if not len(names) - optional <= len(row) <= len(names):
                raise DataFormatError(path, f"cannot write row {n + 1}: {len(row)} fields for {names}")
            f.write("\t".join(check_tsv_value(v, path, name) for v, name in zip(row, names)) + "\n")
            n += 1
    return n


def _iter_collection_lines(path: str | os.PathLike) -> Iterator[tuple[int, Passage]]:
    for line, fields in iter_tsv(path, (2, 3)):
        pid, text = normalize_id(fields[0], path, line, "passage id"), fields[1]
        _nonblank(text, path, line, f"text for passage {pid!r}")
        yield line, Passage(id=pid, text=text, title=fields[2] if len(fields) == 3 else "")


def iter_collection(path: str | os.PathLike) -> Iterator[Passage]:
    """Stream a ``collection.tsv`` (``pid<TAB>text[<TAB>title]``) in file order, without duplicate checks."""
    for _, passage in _iter_collection_lines(path):
        yield passage


def load_collection(path: str | os.PathLike) -> Corpus:
    """Load a ``collection.tsv`` into a :data:`Corpus`, rejecting duplicate pids."""
    return collect_passages(path, _iter_collection_lines(path))


def write_collection(path: str | os.PathLike, corpus: Corpus | Iterable[Passage]) -> int:
    """Atomically write ``pid<TAB>text``, adding a ``title`` column for passages that have one."""
    passages = corpus.values() if isinstance(corpus, dict) else corpus
    rows = ((p.id, p.text, p.title) if p.title else (p.id, p.text) for p in passages)
    return _write_tsv(path, rows, ("passage id", "passage text", "passage title"), optional=1)


def load_tsv_queries(path: str | os.PathLike) -> Queries:
    """Load a ``queries.tsv`` (``qid<TAB>text``) into :data:`Queries`, rejecting duplicate qids."""
    queries: Queries = {}
    for line, (qid, text) in iter_tsv(path, 2):
        qid = normalize_id(qid, path, line, "query id")
        _nonblank(text, path, line, f"text for query {qid!r}")
        if qid in queries:
            raise DataFormatError(path, f"duplicate query id {qid!r}", line)
        queries[qid] = Query(id=qid, text=text)
    return queries


def write_tsv_queries(path: str | os.PathLike, queries: Queries | Iterable[Query]) -> int:
    """Atomically write ``qid<TAB>text`` lines (answers are dropped: the format has no column)."""
    items = queries.values() if isinstance(queries, dict) else queries
    return _write_tsv(path, ((q.id, q.text) for q in items), ("query id", "query text"))


def load_trec_qrels(path: str | os.PathLike, corpus: Corpus | None = None,
                    queries: Queries | None = None) -> Qrels:
    """Load TREC-style qrels (``qid 0 pid rel``), checking ids against ``corpus``/``queries`` if given."""
    qrels: Qrels = {}
    for line, text in iter_lines(path):
        fields = text.split()
        if len(fields) != 4:
            raise DataFormatError(path, f"expected 4 fields 'qid 0 pid rel', got {len(fields)}", line)
        qid, pid = normalize_id(fields[0], path, line, "query id"), normalize_id(fields[2], path, line, "document id")
        rel = fields[3]
        add_judgement(qrels, qid, pid, parse_int(rel, path, line, "relevance"), path, line, corpus, queries)
    return qrels


def write_trec_qrels(path: str | os.PathLike, qrels: Qrels) -> int:
    """Atomically write TREC-style qrels ``qid 0 pid rel``; returns the number of judgements."""
    n = 0
    with atomic_write(path) as f:
        for qid, docs in qrels.items():
            check_token(qid, path, "query id")
            for pid, rel in docs.items():
                f.write(f"{qid} 0 {check_token(pid, path, 'document id')} {int(rel)}\n")
                n += 1
    return n


def iter_triples(path: str | os.PathLike) -> Iterator[tuple[int, tuple[str, str, str]]]:
    """Yield ``(line, (query, positive, negative))`` from a triples TSV; every field must be non-blank."""
    for line, fields in iter_tsv(path, 3):
        for value, what in zip(fields, ("query", "positive", "negative")):
            _nonblank(value, path, line, what)
        yield line, (fields[0], fields[1], fields[2])


def _group(triples: Iterable[tuple[str, str, str]]) -> list[TrainGroup]:
    # dicts keep first-seen order and drop repeats in one pass.
    pos: dict[str, dict[str, None]] = {}
    neg: dict[str, dict[str, None]] = {}
    for qid, p, n in triples:
        pos.setdefault(qid, {})[p] = None
        neg.setdefault(qid, {})[n] = None
    return [TrainGroup(qid=q, pos_ids=list(pos[q]), neg_ids=[n for n in neg[q] if n not in pos[q]])
            for q in pos]


def load_id_triples(path: str | os.PathLike, corpus: Corpus | None = None,
                    queries: Queries | None = None) -> list[TrainGroup]:
    """Load ``qid<TAB>pos_pid<TAB>neg_pid`` triples as one :class:`TrainGroup` per query.

    A passage that is a positive for a query anywhere in the file is never kept as its negative.
    Ids are checked against ``corpus``/``queries`` when given.
    """
    def checked() -> Iterator[tuple[str, str, str]]:
        for line, ids in iter_triples(path):
            qid, p, n = (normalize_id(x, path, line, what) for x, what in zip(ids, ("query id", "passage id", "passage id")))
            if queries is not None and qid not in queries:
                raise DataFormatError(path, f"unknown query id {qid!r}", line)
            if corpus is not None:
                for pid in (p, n):
                    if pid not in corpus:
                        raise DataFormatError(path, f"unknown passage id {pid!r}", line)
            yield qid, p, n

    return _group(checked())


def load_text_triples(path: str | os.PathLike) -> TriplesData:
    """Load ``query<TAB>positive<TAB>negative`` text triples, giving texts content-hash ids."""
    queries: Queries = {}
    corpus: Corpus = {}
    ids: list[tuple[str, str, str]] = []
    for _, (q, p, n) in iter_triples(path):
        qid = stable_id(q, prefix="q")
        queries.setdefault(qid, Query(id=qid, text=q))
        pids = []
        for text in (p, n):
            pid = stable_id(text, prefix="p")
            corpus.setdefault(pid, Passage(id=pid, text=text))
            pids.append(pid)
        ids.append((qid, pids[0], pids[1]))
    return TriplesData(queries=queries, corpus=corpus, groups=_group(ids))


def write_triples(path: str | os.PathLike, triples: Iterable[tuple[str, str, str]]) -> int:
    """Atomically write ``a<TAB>b<TAB>c`` triples (texts or ids); returns the number of lines."""
    return _write_tsv(path, triples, ("query", "positive", "negative"))


def groups_to_triples(groups: Iterable[TrainGroup]) -> Iterator[tuple[str, str, str]]:
    """Expand groups to ``(qid, pos, neg)`` id triples, every positive with every negative.

    Raises
    ------
    DataFormatError
        For a group without negatives, which a triples file cannot hold.
    """
    for g in groups:
        if not g.neg_ids:
            raise DataFormatError(None, f"query {g.qid!r}: a group without negatives cannot be written "
                                        "as triples")
        for p in g.pos_ids:
            for n in g.neg_ids:
                yield g.qid, p, n
