"""Re-ranking a first-stage run's candidates: by any teacher (:func:`rerank`) or stored vectors (:func:`dot_scores`).

Units
-----
:func:`with_tail` turns a re-ranked head and the first stages' runs into one rank-valued run.
:func:`rerank` returns the teacher's raw scores (cross-encoder logits, ColBERT MaxSim, reader
attention scores); :func:`dot_scores` returns dot products of query vectors and stored passage
vectors (cosines for normalised encoders). Both keep each query's candidates in a ``Run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from densekd.data.io import DataFormatError
from densekd.data.types import Corpus, Queries, Run, top_k
from densekd.teachers.base import CandidateList, Teacher, as_teacher


def rerank(teacher: Teacher, run: Run, queries: Queries, corpus: Corpus, k: int = 100,
           batch_size: int | None = None, show_progress: bool = False) -> Run:
    """Re-score the top ``k`` documents of every query of ``run`` with ``teacher``.

    Parameters
    ----------
    teacher
        Any :class:`~densekd.teachers.base.Teacher` (or pair scorer, :func:`~densekd.teachers.base.as_teacher`);
        every query's list goes to one ``score_candidates`` call, so a cross-encoder length-sorts
        across queries and ColBERT encodes each passage once.
    run
        First-stage ``qid -> {pid: score}``; the top ``k`` by score (ties by pid) are kept.
    queries, corpus
        Text lookups; candidates are handed over as :class:`~densekd.data.types.Passage` records (a
        pair-reading teacher scores ``Passage.full_text()``, title and text).
    k
        Documents re-ranked per query; documents below rank ``k`` are dropped from the output.
    batch_size, show_progress
        Passed to ``teacher.score_candidates`` (``batch_size=None``: the teacher's default).

    Returns
    -------
    Run
        ``qid -> {pid: teacher score}`` for the same qids, each dict in decreasing score order (ties by pid).

    Raises
    ------
    DataFormatError
        When the run names a query or document that ``queries`` / ``corpus`` lack.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    spans: list[tuple[str, list[str]]] = []
    for qid, docs in run.items():
        if qid not in queries:
            raise DataFormatError(None, f"run has query {qid!r}, which is not in the queries")
        pids = [pid for pid, _ in top_k(docs, k)]
        missing = [pid for pid in pids if pid not in corpus]
        if missing:
            raise DataFormatError(None, f"run has documents {missing[:3]} for query {qid!r} that are not in the corpus")
        spans.append((qid, pids))
    lists = [CandidateList(queries[qid].text, [corpus[pid] for pid in pids]) for qid, pids in spans]
    kwargs: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    scores = as_teacher(teacher).score_candidates(lists, show_progress=show_progress, **kwargs) if lists else []
    out: Run = {}
    for (qid, pids), values in zip(spans, scores):
        ranked = zip(pids, np.asarray(values).tolist())
        out[qid] = dict(sorted(ranked, key=lambda kv: (-kv[1], kv[0])))
    return out


def dot_scores(query_vectors: np.ndarray, qids: Sequence[str], candidates: Mapping[str, Iterable[str]],
               vectors: Any, row_of: Mapping[str, int]) -> Run:
    """Each query's candidates scored by ``vectors[row_of[pid]] . query_vectors[i]``.

    Parameters
    ----------
    query_vectors
        ``float32[Q, D]``, row ``i`` for ``qids[i]``.
    qids
        The queries, in the order of ``query_vectors``.
    candidates
        ``qid -> candidate pids`` (a ``Run``'s keys work); a query without an entry gets an empty dict.
    vectors
        ``[N, D]`` passage vectors (numpy or memory-mapped), row ``row_of[pid]`` for ``pid``.
    row_of
        ``pid -> row``; every candidate must be in it.

    Returns
    -------
    Run
        ``qid -> {pid: score}`` in candidate order.

    Examples
    --------
    >>> vectors = np.array([[0.5, 1.0], [2.0, 0.0]])
    >>> dot_scores(np.array([[1.0, 0.0]]), ["q"], {"q": ["b", "a"]}, vectors, {"a": 0, "b": 1})
    {'q': {'b': 2.0, 'a': 0.5}}
    """
    out: Run = {}
    for qi, qid in enumerate(qids):
        pids = list(candidates.get(qid, ()))
        scores = np.asarray(vectors[[row_of[pid] for pid in pids]]) @ query_vectors[qi] if pids else np.empty(0)
        out[qid] = dict(zip(pids, scores.tolist()))
    return out


def with_tail(head: Run, tails: Sequence[Run]) -> Run:
    """Rank-valued run: ``head``'s candidates by score, then the ``tails``' other documents in their order.

    Below the re-ranked candidates the first-stage order is kept, so recall@100 stays comparable.
    """
    out: Run = {}
    for qid, scores in head.items():
        order = list(dict.fromkeys([p for p, _ in top_k(scores, len(scores))]
                                   + [p for t in tails for p, _ in top_k(t.get(qid, {}), len(t.get(qid, {})))]))
        out[qid] = {pid: float(len(order) - i) for i, pid in enumerate(order)}
    return out
