"""What every teacher and student step of ``densekd run`` starts from: data, first-stage runs, the frozen
start model's corpus vectors, and the mined training groups (each step cached, see :mod:`.steps`).

One function, :func:`mined_groups`, so that the pipeline and the benchmarks that re-use its caches
(``bench/teacher_scifact.py``, ``bench/distill_scifact.py``) build the same candidates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from densekd.data.types import Run, TrainGroup
from densekd.pipeline import steps


@dataclass
class Mined:
    """The shared inputs (see the module docstring).

    Attributes
    ----------
    ctx
        The pipeline context (config, data, cache, timings).
    train_run, eval_run, bm25_key
        BM25's runs of the training and evaluation queries, and their cache key.
    base_encoder
        The student's start model (its query tower encodes for the zero-shot dense signal).
    store
        The start model's cached corpus vectors (``None`` when nothing needs them).
    cand_run
        The run negatives are mined from (BM25's, or BM25's and the dense one's fused; ``mining.retrieval``).
    groups, mined_key
        The mined training groups (no teacher scores) and their cache key.
    """

    ctx: steps.Context
    train_run: Run
    eval_run: Run
    bm25_key: str
    base_encoder: Any
    store: Any
    cand_run: Run
    groups: list[TrainGroup]
    mined_key: str


def mined_groups(cfg: Any, with_store: bool = True) -> Mined:
    """Load the data and run (or reuse) BM25, the corpus encoding, candidate retrieval and mining.

    ``with_store=False`` skips the corpus encoding when neither the candidates (``mining.retrieval:
    bm25``) nor the teacher need it (``densekd mine`` of a cross-encoder recipe).
    """
    from densekd.encoders.dense import DenseEncoder

    ctx = steps.load_context(cfg)
    train_run, eval_run, bm25_key = steps.bm25_runs(ctx)
    base_encoder = DenseEncoder.from_pretrained(cfg.student.model, passage_max_length=cfg.student.passage_max_length)
    needs_store = with_store or cfg.mining.retrieval != "bm25" or cfg.teacher.uses & {"dense", "label_dense"}
    store = steps.corpus_embeddings(ctx, cfg.student.model, cfg.student.passage_max_length, "base") \
        if needs_store else None
    cand_run, cand_key = steps.candidate_run(ctx, train_run, bm25_key, base_encoder, store)
    groups, mined_key = steps.mine(ctx, cand_run, cand_key)
    return Mined(ctx, train_run, eval_run, bm25_key, base_encoder, store, cand_run, groups, mined_key)
