"""Read and write TREC run files.

File format (data contract)
---------------------------
One line per retrieved document: ``qid Q0 pid rank score tag``, six fields separated by any
whitespace. ``rank`` is an integer and ``score`` a finite float; higher score = more relevant. The
reader keeps only scores (ranks are re-derived by sorting, as trec_eval does); the ``Q0`` and ``tag``
fields are ignored. A ``(qid, pid)`` pair may appear once. The writer ranks each query's documents
by score descending with ties broken by pid, numbers ranks from 1, and prints scores with ``repr``
so that reading the file back gives the same floats. Ids holding whitespace cannot be written; ids read
go through :func:`~densekd.data.io.normalize_id` (a byte-order mark at the start of the file is dropped).
"""

from __future__ import annotations

import math
import os

from densekd.data.io import (
    DataFormatError, atomic_write, check_token, iter_lines, normalize_id, parse_float, parse_int,
)
from densekd.data.types import Run, top_k


def load_run(path: str | os.PathLike) -> Run:
    """Load a TREC run file into ``qid -> {pid: score}`` (query order = first appearance).

    Raises
    ------
    DataFormatError
        On a wrong field count, a non-integer rank, a non-finite score or a repeated pair.
    """
    run: Run = {}
    for line, text in iter_lines(path):
        fields = text.split()
        if len(fields) != 6:
            raise DataFormatError(path, f"expected 6 fields 'qid Q0 pid rank score tag', got {len(fields)}",
                                  line)
        qid, _, pid, rank, score, _ = fields
        qid, pid = normalize_id(qid, path, line, "query id"), normalize_id(pid, path, line, "document id")
        parse_int(rank, path, line, "rank")
        docs = run.setdefault(qid, {})
        if pid in docs:
            raise DataFormatError(path, f"document {pid!r} listed twice for query {qid!r}", line)
        docs[pid] = parse_float(score, path, line, "score")
    return run


def write_run(path: str | os.PathLike, run: Run, tag: str = "densekd", k: int | None = None) -> int:
    """Atomically write ``run`` in TREC format; returns the number of lines.

    Parameters
    ----------
    path
        Destination file.
    run
        ``qid -> {pid: score}``; scores must be finite.
    tag
        The run name in the last column.
    k
        Keep only the ``k`` best documents per query (all when ``None``).
    """
    check_token(tag, path, "tag")
    n = 0
    with atomic_write(path) as f:
        for qid, docs in run.items():
            check_token(qid, path, "query id")
            ranked = top_k(docs, len(docs) if k is None else k)
            for rank, (pid, score) in enumerate(ranked, start=1):
                if not math.isfinite(score):
                    what = f"non-finite score {score} for ({qid!r}, {pid!r})"
                    raise DataFormatError(path, f"cannot write {what}")
                f.write(f"{qid} Q0 {check_token(pid, path, 'document id')} {rank} {float(score)!r} {tag}\n")
                n += 1
    return n
