"""Ranking metrics over a :data:`~densekd.data.types.Run` and :data:`~densekd.data.types.Qrels`.

Data contracts
--------------
* ``run``: ``dict[qid, dict[doc_id, score]]``, higher score = better. Ranks are derived with
  :func:`densekd.data.types.top_k` (score descending, ties broken by doc id ascending), the same order
  every other densekd component uses, so a run scores the same whether it comes from memory or from a
  TREC file written by :func:`densekd.data.trec.write_run`.
* ``qrels``: ``dict[qid, dict[doc_id, int]]``, graded. A document is relevant when ``rel > 0``;
  nDCG uses the grade as its (linear) gain. Zero and negative grades are non-relevant.
* Metric names are lower-case strings (``"ndcg@10"``, ``"mrr@10"``, ``"recall@100"``, ``"map"``,
  ``"precision@5"``, ``"map@100"``, ``"ndcg"``, ``"mrr"``; matched case-insensitively) and are returned
  verbatim as result keys.

Which queries are averaged
--------------------------
The mean is taken over **every query in ``qrels`` that has at least one relevant document**. A judged
query that is missing from the run (or has an empty ranking) scores 0 on every metric; run queries
without judgements are ignored. ``pytrec_eval`` and BEIR instead average over the queries present in
*both* run and qrels, which silently rewards a retriever that fails to answer hard queries; with a
complete run the two conventions agree.

Backend
-------
``ir_measures`` (``pytrec_eval`` for everything except ``RR@k``). ``RR@k`` must go through
``ir_measures``' default pipeline: calling its pytrec_eval provider directly ignores the cutoff
(``recip_rank`` has none) and returns plain RR without warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from densekd.data.types import Qrels, Run, top_k

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map")

# Our name -> (ir_measures name, whether the cutoff "@k" is required).
_MEASURES: dict[str, tuple[str, bool]] = {
    "ndcg": ("nDCG", False),
    "mrr": ("RR", False),
    "recall": ("R", True),
    "precision": ("P", True),
    "map": ("AP", False),
}
VALID_METRICS: tuple[str, ...] = ("ndcg", "ndcg@k", "mrr", "mrr@k", "recall@k", "precision@k", "map", "map@k")
_NAME_RE = re.compile(r"^([a-z]+)(?:@([1-9][0-9]*))?$")


def parse_metric(name: str):
    """Translate one densekd metric name into an ``ir_measures`` measure.

    Parameters
    ----------
    name
        E.g. ``"ndcg@10"``; see :data:`VALID_METRICS` (``k`` is a positive integer).

    Returns
    -------
    ir_measures.Measure

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.

    Examples
    --------
    >>> str(parse_metric("mrr@10"))
    'RR@10'
    """
    match = _NAME_RE.match(name.strip().lower())  # "nDCG@10" is accepted; the result key stays as given
    family, cutoff = (match.group(1), match.group(2)) if match else (None, None)
    if family not in _MEASURES or (_MEASURES[family][1] and cutoff is None):
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(VALID_METRICS)} (k a positive integer)")
    import ir_measures  # imported here: it pulls in pandas, and the CLI must start fast

    measure = ir_measures.parse_measure(_MEASURES[family][0])
    return measure @ int(cutoff) if cutoff else measure


def check_metrics(names: Iterable[str]) -> None:
    """Raise ``ValueError`` (listing the valid names) if ``names`` is empty or any is not a known metric."""
    names = list(names)
    if not names:
        raise ValueError(f"no metric given; valid metrics: {', '.join(VALID_METRICS)}")
    for name in names:
        parse_metric(name)


def judged_queries(qrels: Qrels) -> list[str]:
    """Query ids with at least one relevant (``rel > 0``) document: the queries every mean is taken over."""
    return [qid for qid, docs in qrels.items() if any(rel > 0 for rel in docs.values())]


def _rank_scores(run: Run, qids: Iterable[str]) -> Run:
    """Replace scores by strictly decreasing rank-based scores.

    trec_eval breaks score ties by doc id *descending*; densekd ranks break them ascending
    (:func:`top_k`). Rewriting scores as ``n - rank`` makes the backend see exactly densekd's order.
    """
    ranked: Run = {}
    for qid in qids:
        docs = run.get(qid) or {}
        ordered = top_k(docs, len(docs))
        ranked[qid] = {doc_id: float(len(ordered) - i) for i, (doc_id, _) in enumerate(ordered)}
    return ranked


def per_query_scores(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """Per-query values: ``{metric_name: {qid: value}}`` for every judged query (missing = 0.0).

    See :func:`evaluate` for the parameters and conventions.
    """
    import ir_measures

    measures = {name: parse_metric(name) for name in metrics}
    qids = judged_queries(qrels)
    values = {name: dict.fromkeys(qids, 0.0) for name in metrics}
    present = [qid for qid in qids if run.get(qid)]
    if not present:
        return values
    # Several names may map to one measure ("map" and "map" again): fill every alias from it.
    aliases: dict[str, list[str]] = {}
    for name, measure in measures.items():
        aliases.setdefault(str(measure), []).append(name)
    judged_qrels = {qid: qrels[qid] for qid in qids}
    unique = list({str(m): m for m in measures.values()}.values())
    for metric in ir_measures.iter_calc(unique, judged_qrels, _rank_scores(run, present)):
        for name in aliases[str(metric.measure)]:
            values[name][metric.query_id] = float(metric.value)
    return values


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS,
             per_query: bool = False) -> dict[str, float] | dict[str, dict[str, float]]:
    """Score a run against relevance judgements.

    Parameters
    ----------
    run
        ``qid -> doc_id -> score`` (higher = better).
    qrels
        ``qid -> doc_id -> grade``; ``grade > 0`` is relevant.
    metrics
        Lower-case names: ``ndcg@k`` (nDCG, linear gains, log2 discount), ``mrr@k`` (reciprocal rank of
        the first relevant document within the top k, else 0), ``recall@k``, ``precision@k``, ``map``
        (average precision) and ``map@k`` (AP truncated at k, still divided by the number of relevant
        documents, as trec_eval's ``map_cut``). ``ndcg`` / ``mrr`` without ``@k`` use the full ranking.
    per_query
        Return ``{metric: {qid: value}}`` instead of means.

    Returns
    -------
    dict
        ``{metric_name: mean}`` over every query of ``qrels`` with a relevant document (queries missing
        from the run count as 0), keys exactly as given in ``metrics``.

    Raises
    ------
    ValueError
        On an unknown metric name, or when ``qrels`` has no query with a relevant document.

    Examples
    --------
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    >>> run = {"q1": {"d1": 2.0, "d3": 1.0}}          # q2 not answered: counts as 0
    >>> evaluate(run, qrels, ["mrr@10", "recall@1"])
    {'mrr@10': 0.5, 'recall@1': 0.5}
    """
    check_metrics(metrics)  # fail on a typo before any work, even with empty inputs
    if not judged_queries(qrels):
        raise ValueError("qrels contain no query with a relevant document (rel > 0); nothing to evaluate")
    values = per_query_scores(run, qrels, metrics)
    if per_query:
        return values
    return {name: sum(v.values()) / len(v) for name, v in values.items()}
