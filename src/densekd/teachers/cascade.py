"""Multi-stage retrieval: a first-stage retriever, then re-rankers on ever fewer candidates, each stage timed.

ERNIE-Search (Lu et al.) serves its models as a cascade: the dense retriever finds candidates, the
ColBERT head re-ranks them by MaxSim over stored passage tokens, and (optionally) a cross-encoder
re-ranks the best few. Each :class:`Stage` re-scores the top ``depth`` of the stage before it; the
slower the stage, the fewer candidates it sees.

Output contract
---------------
:func:`cascade_search` returns ``(run, seconds)``:

* ``run``: rank-valued (``{pid: float(n - rank)}``, higher = better): the last stage's candidates in
  its order, then the other candidates of each earlier stage in that stage's order
  (:func:`~densekd.teachers.rerank.with_tail`), so the first stage's recall at its depth is kept;
* ``seconds``: stage name -> wall seconds, one value per query with ``per_query=True`` (queries are
  then searched one at a time, batch 1, as a serving system would), else one value for the batch.

Stage scores are each stage's own units (dense cosines, MaxSim sums, cross-encoder logits); only their
order is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from densekd.data.types import Corpus, Query, Run, top_k
from densekd.index.late_interaction import late_interaction_search
from densekd.teachers.rerank import rerank, with_tail

__all__ = ["Stage", "cascade_search", "colbert_stage", "teacher_stage"]

#: ``(qid -> query text, candidate run) -> qid -> {pid: score}`` over the candidates it was given
StageFn = Callable[[Mapping[str, str], Run], Run]


@dataclass(frozen=True)
class Stage:
    """One re-ranking stage: ``score`` re-scores the top ``depth`` candidates of the previous stage."""

    name: str
    score: StageFn
    depth: int

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"stage {self.name!r}: depth must be >= 1, got {self.depth}")


def top(run: Run, depth: int) -> Run:
    """Each query's top ``depth`` documents of ``run`` (ties by pid), scores kept."""
    return {qid: dict(top_k(docs, depth)) for qid, docs in run.items()}


def colbert_stage(encoder: Any, store: Any, depth: int = 100, name: str = "colbert") -> Stage:
    """Exact MaxSim re-ranking with a late-interaction encoder over its stored corpus tokens.

    ``encoder`` has ``encode_query_tokens``; ``store`` is the
    :class:`~densekd.index.late_interaction.TokenEmbeddingStore` it encoded (passages are not re-encoded).
    """
    def score(queries: Mapping[str, str], run: Run) -> Run:
        return late_interaction_search(encoder, store, queries, k=depth, candidates=top(run, depth))

    return Stage(name, score, depth)


def teacher_stage(teacher: Any, corpus: Corpus, depth: int = 20, name: str = "cross-encoder") -> Stage:
    """Re-ranking by any :class:`~densekd.teachers.base.Teacher` (e.g. a cross-encoder) reading passage texts."""
    def score(queries: Mapping[str, str], run: Run) -> Run:
        return rerank(teacher, run, {qid: Query(qid, text) for qid, text in queries.items()}, corpus, k=depth)

    return Stage(name, score, depth)


def _one_pass(queries: Mapping[str, str], first: Callable[[Mapping[str, str]], Run], first_name: str,
              stages: Sequence[Stage]) -> tuple[Run, dict[str, float]]:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    runs = [first(queries)]
    seconds[first_name] = time.perf_counter() - start
    for stage in stages:
        start = time.perf_counter()
        runs.append(stage.score(queries, runs[-1]))
        seconds[stage.name] = time.perf_counter() - start
    return with_tail(runs[-1], runs[-2::-1]) if stages else runs[0], seconds


def cascade_search(queries: Mapping[str, str], first: Callable[[Mapping[str, str]], Run], stages: Sequence[Stage],
                   first_name: str = "first stage", per_query: bool = False,
                   warmup: int = 0) -> tuple[Run, dict[str, list[float]]]:
    """Run the cascade (module contract): ``first`` retrieves, each stage re-ranks the one before.

    Parameters
    ----------
    queries
        ``qid -> query text``.
    first
        ``queries -> Run`` (e.g. FAISS search of a dense encoder's query vectors, or BM25).
    stages
        Re-rankers in order; stage names must differ from each other and from ``first_name``.
    per_query
        Search one query at a time and time every stage per query (latency); else one batch.
    warmup
        ``per_query`` only: untimed passes over the first queries first (lazy initialisation, thread
        pools); their results are recomputed in the timed pass.

    Examples
    --------
    >>> first = lambda qs: {q: {"a": 3.0, "b": 2.0, "c": 1.0} for q in qs}
    >>> flip = Stage("flip", lambda qs, run: {q: {p: -s for p, s in top(run, 2)[q].items()} for q in run}, 2)
    >>> run, seconds = cascade_search({"q": "text"}, first, [flip], per_query=True)
    >>> list(run["q"]), sorted(seconds)
    (['b', 'a', 'c'], ['first stage', 'flip'])
    """
    names = [first_name, *(s.name for s in stages)]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if not per_query:
        run, secs = _one_pass(queries, first, first_name, stages)
        return run, {name: [secs[name]] for name in names}
    for qid, text in list(queries.items())[:warmup]:
        _one_pass({qid: text}, first, first_name, stages)
    out: Run = {}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for qid, text in queries.items():
        run, secs = _one_pass({qid: text}, first, first_name, stages)
        out.update(run)
        for name in names:
            seconds[name].append(secs[name])
    return out, seconds
