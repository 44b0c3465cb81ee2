"""The teacher signal of ``densekd run``: each member's scores of a query's candidates, fused into one logit.

Members (``teacher.fusion`` names, :mod:`densekd.teachers.fusion`): ``cross_encoder`` (raw logits from
the annotator, or a dev rerank run), ``bm25`` (exact BM25 scores of every candidate), ``dense`` (the zero-shot
student's cosines from the cached corpus vectors) and ``label_dense`` (cross-fitted labels-only
retrievers, :mod:`densekd.pipeline.label_dense`). BM25 scores every candidate, also those only the
dense retriever found (:meth:`~densekd.index.bm25.BM25Index.score`); a candidate the cross-encoder did
not score (below ``rerank_depth``) gets its lowest score for the query.

Training groups get the fused signal as their ``teacher_scores`` (:func:`fuse_groups`); on the
evaluation queries the same signal re-ranks the union of BM25's and (when mining uses it) the
zero-shot dense retriever's top ``rerank_depth`` (:func:`teacher_dev_runs`), which is the teacher's
own quality, the figure every distilled student is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from densekd.data.types import Run, TrainGroup, top_k
from densekd.eval.metrics import evaluate
from densekd.teachers.rerank import with_tail  # noqa: F401 (re-exported: the dev runs below use it)

METRICS = ["ndcg@10", "mrr@10", "recall@100", "map"]


def dense_signal(encoder: Any, store: Any, texts: Mapping[str, str], candidates: Mapping[str, Sequence[str]]) -> Run:
    """Dense scores ``q . p`` of each query's candidates, from stored passage vectors (no passage encoding).

    ``store`` has ``.embeddings[N, D]`` and either ``.ids`` (an EmbeddingStore) or ``.row_of`` (a
    :class:`~densekd.index.passage_table.PassageEmbeddingTable`, e.g. the corpus plus ADAM dark
    examples); every candidate must be one of its ids.
    """
    from densekd.teachers.rerank import dot_scores

    qids = list(candidates)
    q = encoder.encode_queries([texts[qid] for qid in qids])
    rows = getattr(store, "row_of", None)
    if rows is None:
        rows = {pid: i for i, pid in enumerate(store.ids)}
    return dot_scores(q, qids, candidates, store.embeddings, rows)


def bm25_scores(ctx: Any, candidates: Mapping[str, Sequence[str]], extra: Mapping[str, str] | None = None) -> Run:
    """Exact BM25 scores of each query's candidates, from an index of ``ctx.corpus`` built once per context.

    Candidates in ``extra`` (``id -> text``, texts outside the corpus such as ADAM dark examples) are
    scored with the corpus's statistics (:meth:`~densekd.index.bm25.BM25Index.score_texts`).
    """
    from densekd.index.bm25 import BM25Index

    index = ctx.__dict__.get("_bm25_index")
    if index is None:  # ~1 s for SciFact; the cached BM25 runs hold only each query's top ``depth``
        index = ctx.__dict__["_bm25_index"] = BM25Index().index(ctx.corpus, show_progress=False)
    texts = {qid: ctx.queries[qid].text for qid in candidates}
    extra = extra or {}
    corpus_part = index.score(texts, {q: [p for p in c if p not in extra] for q, c in candidates.items()})
    extra_part = index.score_texts(texts, {q: {p: extra[p] for p in c if p in extra} for q, c in candidates.items()})
    return {q: {p: (extra_part[q] if p in extra else corpus_part[q])[p] for p in c} for q, c in candidates.items()}


def member_scores(ctx: Any, candidates: Mapping[str, Sequence[str]], cross_encoder: Run | None = None,
                  base_encoder: Any = None, store: Any = None, label_dense: Any = None,
                  weights: Mapping[str, float] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, Run]:
    """Each weighted member's scores of each query's candidates (``name -> Run``).

    ``cross_encoder`` is a run of raw logits (required when weighted); ``base_encoder``/``store`` serve
    ``dense``, ``label_dense`` (a :class:`~densekd.pipeline.label_dense.LabelDense`) with ``store``.
    ``extra`` (``id -> text``) lists candidates outside the corpus (ADAM dark examples): BM25 scores
    their texts with the corpus statistics, the dense members read their rows from ``store``, which
    must then hold them (:func:`densekd.pipeline.steps.query_only_table`).
    """
    weights = ctx.cfg.teacher.fusion if weights is None else weights
    uses = {n for n, w in weights.items() if w > 0}
    texts = {qid: ctx.queries[qid].text for qid in candidates}
    out: dict[str, Run] = {"bm25": bm25_scores(ctx, candidates, extra)} if "bm25" in uses else {}
    if "cross_encoder" in uses:
        if cross_encoder is None:
            raise ValueError("teacher.fusion weights cross_encoder but no cross-encoder scores were computed")
        out["cross_encoder"] = cross_encoder
    if "dense" in uses:
        out["dense"] = dense_signal(base_encoder, store, texts, candidates)
    if "label_dense" in uses:
        if label_dense is None:
            raise ValueError("teacher.fusion weights label_dense but its members were not trained")
        out["label_dense"] = label_dense.scores(store, texts, candidates)
    return out


def fuse_run(candidates: Mapping[str, Sequence[str]], signals: Mapping[str, Run],
             weights: Mapping[str, float]) -> Run:
    """The fused teacher logit of every query's candidates (:func:`~densekd.teachers.fusion.fuse_candidates`)."""
    from densekd.teachers.fusion import fuse_candidates

    return {qid: fuse_candidates(list(c), {n: s.get(qid, {}) for n, s in signals.items()}, weights)
            for qid, c in candidates.items()}


def fuse_groups(ctx: Any, groups: list[TrainGroup], base_encoder: Any, store: Any,
                label_dense: Any = None) -> list[TrainGroup]:
    """Replace each group's cross-encoder logits (if any) by the configured fused teacher signal.

    Every member scores every candidate, the groups' ``extra_passages`` (ADAM dark examples) too;
    ``store`` must then hold their frozen vectors when a dense member is weighted.
    """
    weights = ctx.cfg.teacher.fusion
    margin = ctx.cfg.teacher.positive_margin
    if ctx.cfg.teacher.uses == {"cross_encoder"} and weights["cross_encoder"] == 1.0:
        if margin is None:
            return groups
        fused = {g.qid: dict(g.teacher_scores or {}) for g in groups}  # the cross-encoder's own logits, unfused
    else:
        cands = {g.qid: g.pos_ids + g.neg_ids for g in groups}
        ce = {g.qid: g.teacher_scores for g in groups if g.teacher_scores is not None}
        extra = {pid: text for g in groups for pid, text in (g.extra_passages or {}).items()}
        signals = member_scores(ctx, cands, ce or None, base_encoder, store, label_dense, extra=extra)
        fused = fuse_run(cands, signals, weights)
    if margin is not None:  # the labels win over every teacher, the cross-encoder alone included
        fused = {g.qid: lift_positives(fused[g.qid], g.pos_ids, margin, synthetic=g.extra_passages or ())
                 for g in groups}
    return [TrainGroup(g.qid, g.pos_ids, g.neg_ids, fused[g.qid], g.extra_passages) for g in groups]


def lift_positives(scores: Mapping[str, float], positives: Sequence[str], margin: float,
                   synthetic: Iterable[str] = ()) -> dict[str, float]:
    """Labels win over the teacher: each judged positive scores at least ``margin`` above the best negative.

    A cross-fitted teacher ranks a training query's positive first only as often as it would on an
    unseen query (SciFact: 69 % of training queries); distilling that order as is teaches the student
    to put negatives above known positives. The negatives keep the teacher's scores and order.
    ``synthetic`` candidates (ADAM dark examples) have no label, so they neither set the floor nor move:
    a masked copy of the positive keeps the teacher's score, however close to the positive it is.

    Examples
    --------
    >>> lift_positives({"p": 0.5, "a": 2.0, "b": 1.0}, ["p"], 1.0)
    {'p': 3.0, 'a': 2.0, 'b': 1.0}
    >>> lift_positives({"p": 0.5, "a": 2.0, "dark:mask:q:0": 4.0}, ["p"], 1.0, synthetic=["dark:mask:q:0"])
    {'p': 3.0, 'a': 2.0, 'dark:mask:q:0': 4.0}
    """
    pos, synthetic = set(positives), set(synthetic)
    negatives = [v for pid, v in scores.items() if pid not in pos and pid not in synthetic]
    if not negatives:
        return dict(scores)
    floor = max(negatives) + margin
    return {pid: max(v, floor) if pid in pos else v for pid, v in scores.items()}


def ranked_union(runs: Sequence[Run], depth: int) -> dict[str, list[str]]:
    """Each query's candidates: the top ``depth`` of every run, in run order, each id once."""
    qids = dict.fromkeys(q for run in runs for q in run)
    return {q: list(dict.fromkeys(p for run in runs for p, _ in top_k(run.get(q, {}), depth))) for q in qids}


def teacher_dev_runs(ctx: Any, ce_run: Run | None, eval_run: Run, base_encoder: Any = None, store: Any = None,
                     weights: Mapping[str, float] | None = None, label_dense: Any = None,
                     dense_eval_run: Run | None = None) -> dict[str, Run]:
    """The teacher re-ranking each evaluation query's candidates: ``{"fused": Run}`` (+ ``"cross_encoder"``).

    Candidates are BM25's top ``teacher.rerank_depth``, joined by a dense retriever's top
    ``rerank_depth`` when ``dense_eval_run`` is given (the zero-shot one's, or the labels-only members'
    with ``mining.retrieval: bm25+label_dense``: :meth:`~densekd.pipeline.candidates.Mined.first_stage`);
    ``ce_run`` holds the cross-encoder's logits of BM25's top ``rerank_depth`` (when the fusion uses it).
    Below the candidates BM25's (then the dense run's) order is kept.
    """
    weights = ctx.cfg.teacher.fusion if weights is None else weights
    depth = ctx.cfg.teacher.rerank_depth
    first = [eval_run] + ([dense_eval_run] if dense_eval_run is not None else [])
    cands = ranked_union(first, depth)
    signals = member_scores(ctx, cands, ce_run, base_encoder, store, label_dense, weights)
    runs = {"fused": with_tail(fuse_run(cands, signals, weights), first)}
    if ce_run is not None:
        runs["cross_encoder"] = with_tail(ce_run, first)
    return runs


def teacher_dev_metrics(ctx: Any, ce_run: Run | None, eval_run: Run, base_encoder: Any = None, store: Any = None,
                        weights: Mapping[str, float] | None = None, label_dense: Any = None,
                        dense_eval_run: Run | None = None) -> dict[str, dict]:
    """:func:`teacher_dev_runs` evaluated on the evaluation qrels (``METRICS``)."""
    runs = teacher_dev_runs(ctx, ce_run, eval_run, base_encoder, store, weights, label_dense, dense_eval_run)
    return {name: evaluate(run, ctx.eval_qrels, METRICS) for name, run in runs.items()}
