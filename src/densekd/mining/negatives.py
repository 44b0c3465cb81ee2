"""Hard-negative mining: turn a retrieval run and qrels into :class:`~densekd.data.types.TrainGroup` s.

Data contract
-------------
Inputs are a :data:`~densekd.data.types.Run` (``qid -> {pid: retrieval score}``, higher = better; BM25
or dense, the score units only matter for the margin filters) and :data:`~densekd.data.types.Qrels`
(graded, ``rel > 0`` is a positive). Optional ``teacher_scores`` (``qid -> {pid: raw teacher logit}``,
e.g. a cross-encoder rerank of the same run) drive false-negative removal.

For every run query with at least one judged positive, the pipeline is:

1. **rank range**: rank the run's documents (score desc, ties by id: :func:`~densekd.data.types.top_k`)
   and keep 0-based ranks ``[lo, hi)``. Ranks count the positives too, so ``rank_range=(0, 100)`` means
   "the retriever's top 100", as in sentence-transformers' ``mine_hard_negatives``.
2. **positives**: judged positives (``rel > 0``) are never mined. Judged non-relevant documents
   (``rel <= 0``) stay: they are explicit negatives.
3. **margin filters** (sentence-transformers semantics), against ``pos_score``, the retrieval score of
   the highest-scoring positive *present anywhere in the run* (not only inside the rank range):
   a candidate is dropped when ``score > pos_score - absolute_margin`` or when
   ``score > pos_score * (1 - relative_margin)``. When no positive of the query is in the run there is
   no reference score: the margin filters are skipped for that query and counted in
   :attr:`MiningStats.margin_skipped_queries`. ``relative_margin`` assumes non-negative scores
   (BM25, cosine); with negative scores ``pos_score * (1 - m)`` moves the wrong way.
4. **teacher denoising** (when both ``teacher_scores`` and ``teacher_margin`` are given): a candidate is
   dropped as a likely false negative when ``teacher >= min(teacher score of the positives) -
   teacher_margin``. Queries whose positives have no teacher score skip this filter
   (:attr:`MiningStats.teacher_skipped_queries`); candidates without a teacher score are kept and
   counted (:attr:`MiningStats.teacher_unscored`).
5. **sampling** ``n_negatives`` of what remains: ``"top"`` takes the best-ranked, ``"random"`` draws
   uniformly with an RNG seeded from ``(seed, qid)``, so a query's negatives do not depend on the order
   of the run dict or on the other queries. Either way ``neg_ids`` are listed in rank order. Fewer
   candidates than ``n_negatives`` gives all of them (:attr:`MiningStats.short_queries`).

Output groups follow the run's query order; ``pos_ids`` are sorted by relevance (desc) then id;
``teacher_scores`` is left ``None`` (annotation is :func:`densekd.teachers.annotate.annotate`'s job).

Example
-------
>>> run = {"q": {"p": 9.0, "a": 8.0, "b": 5.0, "c": 1.0}}
>>> [g.neg_ids for g in mine_negatives(run, {"q": {"p": 1}}, n_negatives=2)]
[['a', 'b']]
>>> [g.neg_ids for g in mine_negatives(run, {"q": {"p": 1}}, absolute_margin=2.0)]
[['b', 'c']]
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from typing import Literal

from densekd.data.types import Qrels, Run, TrainGroup

__all__ = ["MiningStats", "mine_negatives", "mine_negatives_with_stats"]

logger = logging.getLogger(__name__)

Sampling = Literal["top", "random"]


@dataclass(slots=True)
class MiningStats:
    """Counts of what each stage of :func:`mine_negatives` kept and dropped (summed over queries).

    Attributes
    ----------
    run_queries
        Queries in the run.
    groups
        Groups returned.
    no_positive_queries
        Run queries skipped because qrels judge no document of theirs relevant.
    positives_not_in_run
        Queries with positives in qrels but absent from the run (often a qid mismatch).
    positives_in_range
        Judged positives that fell inside the rank range (removed from the candidates).
    candidates
        Candidates in the rank range after removing positives.
    dropped_margin
        Candidates dropped by the absolute/relative margin filters.
    margin_skipped_queries
        Queries where the margin filters were skipped because no positive is in the run.
    dropped_teacher
        Candidates dropped as likely false negatives by the teacher filter.
    teacher_skipped_queries
        Queries where the teacher filter was skipped because no positive has a teacher score.
    teacher_unscored
        Candidates kept by the teacher filter only because they have no teacher score.
    short_queries
        Groups with fewer than ``n_negatives`` negatives.
    negatives
        Negatives returned in total.
    """

    run_queries: int = 0
    groups: int = 0
    no_positive_queries: int = 0
    positives_not_in_run: int = 0
    positives_in_range: int = 0
    candidates: int = 0
    dropped_margin: int = 0
    margin_skipped_queries: int = 0
    dropped_teacher: int = 0
    teacher_skipped_queries: int = 0
    teacher_unscored: int = 0
    short_queries: int = 0
    negatives: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for logs and pipeline reports)."""
        return asdict(self)


def _check_args(n_negatives: int, rank_range: tuple[int, int | None], sampling: str,
                relative_margin: float | None, absolute_margin: float | None,
                teacher_margin: float | None) -> None:
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    lo, hi = rank_range
    if lo < 0 or (hi is not None and hi <= lo):
        raise ValueError(f"rank_range must be (lo, hi) with 0 <= lo < hi, got {rank_range}")
    if sampling not in ("top", "random"):
        raise ValueError(f"sampling must be 'top' or 'random', got {sampling!r}")
    if relative_margin is not None and not 0.0 <= relative_margin < 1.0:
        raise ValueError(f"relative_margin must be in [0, 1), got {relative_margin}")
    if absolute_margin is not None and absolute_margin < 0:
        raise ValueError(f"absolute_margin must be >= 0, got {absolute_margin}")
    if teacher_margin is not None and teacher_margin < 0:
        raise ValueError(f"teacher_margin must be >= 0, got {teacher_margin}")


def _margin_filter(candidates: list[str], scores: dict[str, float], positives: list[str],
                   relative_margin: float | None, absolute_margin: float | None,
                   stats: MiningStats) -> list[str]:
    """Drop candidates scoring too close to the best in-run positive (no-op without one)."""
    if relative_margin is None and absolute_margin is None:
        return candidates
    in_run = [scores[p] for p in positives if p in scores]
    if not in_run:
        stats.margin_skipped_queries += 1
        return candidates
    pos_score = max(in_run)
    limit = float("inf")
    if absolute_margin is not None:
        limit = min(limit, pos_score - absolute_margin)
    if relative_margin is not None:
        limit = min(limit, pos_score * (1.0 - relative_margin))
    kept = [pid for pid in candidates if scores[pid] <= limit]
    stats.dropped_margin += len(candidates) - len(kept)
    return kept


def _teacher_filter(candidates: list[str], teacher: dict[str, float] | None, positives: list[str],
                    teacher_margin: float, stats: MiningStats) -> list[str]:
    """Drop candidates the teacher scores at least as high as the weakest positive (minus margin)."""
    pos_scores = [teacher[p] for p in positives if teacher and p in teacher]
    if not pos_scores:
        stats.teacher_skipped_queries += 1
        return candidates
    threshold = min(pos_scores) - teacher_margin
    kept = []
    for pid in candidates:
        if pid not in teacher:
            # Unknown is not evidence of a false negative; keep it but make the gap visible in stats.
            stats.teacher_unscored += 1
            kept.append(pid)
        elif teacher[pid] < threshold:
            kept.append(pid)
    stats.dropped_teacher += len(candidates) - len(kept)
    return kept


def _sample(candidates: list[str], n: int, sampling: Sampling, seed: int, qid: str) -> list[str]:
    """Pick ``n`` candidates; the result stays in rank order either way."""
    if len(candidates) <= n:
        return list(candidates)
    if sampling == "top":
        return candidates[:n]
    # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and machines
    # (unlike hash()) and gives each query its own stream, independent of iteration order.
    picked = set(random.Random(f"{seed}\x1f{qid}").sample(range(len(candidates)), n))
    return [pid for i, pid in enumerate(candidates) if i in picked]


def _ranked(scores: dict[str, float]) -> list[str]:
    # Same order as data.types.top_k (score desc, id asc) without its k cut.
    return [pid for pid, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def mine_negatives_with_stats(
    run: Run, qrels: Qrels, *, n_negatives: int = 30, rank_range: tuple[int, int | None] = (0, 100),
    sampling: Sampling = "top", seed: int = 0, relative_margin: float | None = None,
    absolute_margin: float | None = None, teacher_scores: dict[str, dict[str, float]] | None = None,
    teacher_margin: float | None = None, queries_with_positives_only: bool = True,
) -> tuple[list[TrainGroup], MiningStats]:
    """:func:`mine_negatives` that also returns the :class:`MiningStats` (same arguments)."""
    _check_args(n_negatives, rank_range, sampling, relative_margin, absolute_margin, teacher_margin)
    lo, hi = rank_range
    stats = MiningStats(run_queries=len(run))
    stats.positives_not_in_run = sum(
        1 for qid, docs in qrels.items() if qid not in run and any(r > 0 for r in docs.values()))
    groups = []
    for qid, scores in run.items():
        judged = qrels.get(qid, {})
        positives = sorted((pid for pid, rel in judged.items() if rel > 0), key=lambda p: (-judged[p], p))
        if not positives:
            if not queries_with_positives_only:
                raise ValueError(f"query {qid!r} of the run has no judged positive in qrels "
                                 "(queries_with_positives_only=False demands one for every run query)")
            stats.no_positive_queries += 1
            continue
        in_range = _ranked(scores)[lo:hi]
        pos_set = set(positives)
        candidates = [pid for pid in in_range if pid not in pos_set]
        stats.positives_in_range += len(in_range) - len(candidates)
        stats.candidates += len(candidates)
        candidates = _margin_filter(candidates, scores, positives, relative_margin, absolute_margin, stats)
        if teacher_scores is not None and teacher_margin is not None:
            candidates = _teacher_filter(candidates, teacher_scores.get(qid), positives, teacher_margin,
                                         stats)
        negatives = _sample(candidates, n_negatives, sampling, seed, qid)
        stats.short_queries += len(negatives) < n_negatives
        stats.negatives += len(negatives)
        groups.append(TrainGroup(qid=qid, pos_ids=positives, neg_ids=negatives))
    stats.groups = len(groups)
    return groups, stats


def mine_negatives(
    run: Run, qrels: Qrels, *, n_negatives: int = 30, rank_range: tuple[int, int | None] = (0, 100),
    sampling: Sampling = "top", seed: int = 0, relative_margin: float | None = None,
    absolute_margin: float | None = None, teacher_scores: dict[str, dict[str, float]] | None = None,
    teacher_margin: float | None = None, queries_with_positives_only: bool = True,
) -> list[TrainGroup]:
    """Mine hard negatives for every run query that has a judged positive (see the module docstring).

    Parameters
    ----------
    run
        ``qid -> {pid: retrieval score}`` (BM25 or dense), higher = better.
    qrels
        ``qid -> {pid: relevance}``; ``rel > 0`` is a positive, and positives are never mined.
    n_negatives
        Negatives per query (fewer when fewer candidates survive the filters).
    rank_range
        0-based ``[lo, hi)`` slice of the run's ranking (positives included in the ranks);
        ``hi=None`` means no upper bound.
    sampling
        ``"top"``: best-ranked survivors; ``"random"``: uniform draw seeded by ``(seed, qid)``.
    seed
        Seed for ``sampling="random"``.
    relative_margin
        Drop candidates with ``score > pos_score * (1 - relative_margin)``; in ``[0, 1)``.
    absolute_margin
        Drop candidates with ``score > pos_score - absolute_margin`` (retrieval-score units).
    teacher_scores
        ``qid -> {pid: raw teacher logit}`` for false-negative removal.
    teacher_margin
        Drop candidates with ``teacher >= min(positive teacher scores) - teacher_margin`` (logit
        units); the teacher filter is off while this is ``None``.
    queries_with_positives_only
        ``True``: skip run queries without a judged positive (counted in the stats). ``False``: raise
        ``ValueError`` on such a query instead, a strict mode that catches run/qrels id mismatches
        (a :class:`TrainGroup` needs a positive, so there is no third option).

    Returns
    -------
    list[TrainGroup]
        One group per kept query in run order, ``teacher_scores=None``. The counts per filter are
        logged at INFO; use :func:`mine_negatives_with_stats` to get them as :class:`MiningStats`.
    """
    groups, stats = mine_negatives_with_stats(
        run, qrels, n_negatives=n_negatives, rank_range=rank_range, sampling=sampling, seed=seed,
        relative_margin=relative_margin, absolute_margin=absolute_margin, teacher_scores=teacher_scores,
        teacher_margin=teacher_margin, queries_with_positives_only=queries_with_positives_only)
    logger.info("mined %d negatives for %d groups: %s", stats.negatives, stats.groups, stats.as_dict())
    return groups
