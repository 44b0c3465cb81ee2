"""Read and write data sets in the BEIR folder layout.

File formats (data contract)
----------------------------
``<root>/corpus.jsonl``
    One JSON object per line: ``{"_id": str | int, "title": str (optional), "text": str}``.
    Integer ids are read as strings. ``text`` must be non-blank unless ``allow_empty=True`` (Cranfield
    ships two empty documents, one of them judged). Extra keys (``metadata``) are ignored.
``<root>/queries.jsonl``
    ``{"_id": str | int, "text": str, "answers": [str, ...] (optional, QA sets)}``; ``text`` non-blank.
``<root>/qrels/<split>.tsv``
    Tab-separated ``query-id  corpus-id  score`` with an optional header line; ``score`` is an integer
    (graded relevance, ``> 0`` relevant, within the 32-bit range the evaluation backend takes). A pair
    judged twice with two different scores is an error.

Ids follow the policy of :func:`~densekd.data.io.normalize_id` (surrounding whitespace stripped,
empty ids and lone surrogates rejected); a UTF-8 byte-order mark at the start of a file is dropped.

Ids are unique within a file. Every error raises :class:`~densekd.data.io.DataFormatError` naming the
file and the line. Writers are atomic and produce exactly these formats, so ``load(write(x)) == x``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from densekd.data.io import (
    DataFormatError, atomic_write, check_tsv_value, collect_passages, get_field, get_id, iter_jsonl, iter_tsv,
    normalize_id, parse_int, write_jsonl,
)
from densekd.data.types import Corpus, Passage, Qrels, Queries, Query

QRELS_HEADER = ("query-id", "corpus-id", "score")
# Third-column names that mark a first line as a header rather than a judgement.
_HEADER_SCORE_NAMES = {"score", "relevance", "rel", "label"}
MAX_GRADE = 2**31 - 1


@dataclass
class BeirData:
    """One split of a BEIR data set: the full corpus, the split's queries and its judgements."""

    corpus: Corpus
    queries: Queries
    qrels: Qrels


def _iter_corpus_lines(path: str | os.PathLike, allow_empty: bool) -> Iterator[tuple[int, Passage]]:
    for line, obj in iter_jsonl(path):
        pid = get_id(obj, ("_id", "id"), path, line)
        text = get_field(obj, "text", path, line, required=not allow_empty, default="")
        title = get_field(obj, "title", path, line, required=False, default="")
        if not allow_empty and not text.strip():
            raise DataFormatError(
                path, f"passage {pid!r} has empty text (pass allow_empty=True to keep it)", line)
        yield line, Passage(id=pid, text=text, title=title)


def iter_corpus(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[Passage]:
    """Stream the passages of a ``corpus.jsonl`` in file order.

    Duplicate ids are not checked here (that would hold every id in memory); :func:`load_corpus` does.

    Parameters
    ----------
    path
        The ``corpus.jsonl`` file.
    allow_empty
        Keep passages whose text is blank instead of raising.

    Yields
    ------
    Passage
    """
    for _, passage in _iter_corpus_lines(path, allow_empty):
        yield passage


def load_corpus(path: str | os.PathLike, allow_empty: bool = False) -> Corpus:
    """Load a ``corpus.jsonl`` into an id -> :class:`Passage` dict (file order), rejecting duplicate ids."""
    return collect_passages(path, _iter_corpus_lines(path, allow_empty))


def load_queries(path: str | os.PathLike) -> Queries:
    """Load a ``queries.jsonl``; ``answers`` is kept when present (QA sets), else ``None``."""
    queries: Queries = {}
    for line, obj in iter_jsonl(path):
        qid = get_id(obj, ("_id", "id"), path, line)
        text = get_field(obj, "text", path, line)
        if not text.strip():
            raise DataFormatError(path, f"query {qid!r} has empty text", line)
        answers = get_field(obj, "answers", path, line, types=list, required=False)
        if answers is not None and not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, f"query {qid!r}: 'answers' must be a list of strings", line)
        if qid in queries:
            raise DataFormatError(path, f"duplicate query id {qid!r}", line)
        queries[qid] = Query(id=qid, text=text, answers=answers)
    return queries


def add_judgement(qrels: Qrels, qid: str, pid: str, rel: int, path: str | os.PathLike, line: int,
                  corpus: Corpus | None = None, queries: Queries | None = None) -> None:
    """Add one ``(qid, pid, rel)`` judgement to ``qrels`` with the checks every qrels format shares.

    Shared with :mod:`densekd.data.msmarco` so both qrels formats validate identically.
    """
    if not -MAX_GRADE <= rel <= MAX_GRADE:  # pytrec_eval stores grades in a C int and fails on more
        raise DataFormatError(path, f"relevance grade {rel} is out of range (|grade| <= {MAX_GRADE})", line)
    if queries is not None and qid not in queries:
        raise DataFormatError(path, f"unknown query id {qid!r} (not in the queries file)", line)
    if corpus is not None and pid not in corpus:
        raise DataFormatError(path, f"unknown document id {pid!r} (not in the corpus)", line)
    judged = qrels.setdefault(qid, {})
    # Exact repeats happen in merged qrels and are harmless; two grades for one pair are not.
    if judged.get(pid, rel) != rel:
        raise DataFormatError(path, f"pair ({qid!r}, {pid!r}) judged {judged[pid]} and {rel}", line)
    judged[pid] = rel


def load_qrels(path: str | os.PathLike, corpus: Corpus | None = None,
               queries: Queries | None = None) -> Qrels:
    """Load a BEIR ``qrels/<split>.tsv`` (``query-id  corpus-id  score``, header optional).

    Parameters
    ----------
    path
        The qrels file.
    corpus, queries
        When given, every judged id must exist in them.

    Returns
    -------
    Qrels
        ``qid -> {doc_id: relevance}`` in file order.
    """
    qrels: Qrels = {}
    for n, (line, (qid, pid, score)) in enumerate(iter_tsv(path, 3)):
        if n == 0 and score.strip().lower() in _HEADER_SCORE_NAMES:
            continue
        rel = parse_int(score, path, line, "relevance score")
        add_judgement(qrels, normalize_id(qid, path, line, "query id"), normalize_id(pid, path, line, "document id"),
                      rel, path, line, corpus, queries)
    return qrels


def _split_path(root: Path, split: str) -> Path:
    path = root / "qrels" / f"{split}.tsv"
    if not path.is_file():
        # Name the splits that do exist: the usual mistake is "test" on a set shipping "dev".
        found = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise DataFormatError(path, f"no qrels for split {split!r} (available: {', '.join(found) or 'none'})")
    return path


def load_beir(root: str | os.PathLike, split: str, corpus: Corpus | None = None,
              allow_empty: bool = False) -> BeirData:
    """Load one split of a BEIR folder.

    Parameters
    ----------
    root
        Folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
    split
        Qrels file stem, e.g. ``"dev"``.
    corpus
        An already loaded corpus of this folder, so that loading several splits reads it once.
    allow_empty
        Passed to :func:`load_corpus` when the corpus is read here.

    Returns
    -------
    BeirData
        The corpus, the queries judged in this split (in ``queries.jsonl`` order) and the qrels,
        checked against both.
    """
    root = Path(root)
    qrels_path = _split_path(root, split)
    if corpus is None:
        corpus = load_corpus(root / "corpus.jsonl", allow_empty=allow_empty)
    all_queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(qrels_path, corpus=corpus, queries=all_queries)
    queries = {qid: q for qid, q in all_queries.items() if qid in qrels}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


def write_corpus(path: str | os.PathLike, corpus: Corpus | Iterable[Passage]) -> int:
    """Atomically write passages as ``corpus.jsonl``; returns the number written."""
    passages = corpus.values() if isinstance(corpus, dict) else corpus
    return write_jsonl(path, ({"_id": p.id, "title": p.title, "text": p.text} for p in passages))


def write_queries(path: str | os.PathLike, queries: Queries | Iterable[Query]) -> int:
    """Atomically write ``queries.jsonl``; ``answers`` is written only when not ``None``."""
    items = queries.values() if isinstance(queries, dict) else queries

    def rows() -> Iterator[dict]:
        for q in items:
            row: dict = {"_id": q.id, "text": q.text}
            if q.answers is not None:
                row["answers"] = q.answers
            yield row

    return write_jsonl(path, rows())


def write_qrels(path: str | os.PathLike, qrels: Qrels) -> int:
    """Atomically write a BEIR qrels TSV with its header; returns the number of judgements.

    Ids holding a tab or line break are rejected (see :func:`~densekd.data.io.check_tsv_value`).
    Queries with no judgement leave no trace in the file.
    """
    n = 0
    with atomic_write(path) as f:
        f.write("\t".join(QRELS_HEADER) + "\n")
        for qid, docs in qrels.items():
            check_tsv_value(qid, path, "query id")
            for pid, rel in docs.items():
                f.write(f"{qid}\t{check_tsv_value(pid, path, 'document id')}\t{int(rel)}\n")
                n += 1
    return n
