"""What every teacher and student step of ``densekd run`` starts from: data, first-stage runs, the frozen
start model's corpus vectors, and the mined training groups (each step cached, see :mod:`.steps`).

One function, :func:`mined_groups`, so that the pipeline and the benchmarks that re-use its caches
(``bench/teacher_scifact.py``, ``bench/distill_scifact.py``) build the same candidates the same way.

With ``mining.retrieval: bm25+label_dense`` mining takes two stages: the teacher's labels-only members
train on groups mined from BM25 + the zero-shot retriever (they need negatives before they exist), then
the student's groups are mined from BM25 + the members' own retrieval (:meth:`LabelDense.retrieve
<densekd.pipeline.label_dense.LabelDense.retrieve>`, out of fold on training queries). ``Mined.groups``
are always the student's groups; ``Mined.member_groups`` what the members train on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from densekd.data.types import Run, TrainGroup
from densekd.pipeline import steps
from densekd.pipeline.cache import cache_key


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
        The student's mined training groups (no teacher scores) and their cache key.
    member_groups
        The groups the labels-only members train on (``groups`` unless ``mining.retrieval`` is
        ``bm25+label_dense``).
    label_dense
        The trained members (:meth:`members` trains them on first use; mining from their retrieval
        trains them up front).
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
    member_groups: list[TrainGroup]
    label_dense: Any = None

    def members(self) -> Any:
        """The teacher's labels-only members (:func:`~densekd.pipeline.label_dense.train_label_dense`, cached)."""
        from densekd.pipeline.label_dense import train_label_dense

        if self.label_dense is None:
            self.label_dense = train_label_dense(self.ctx, self.member_groups, self.store)
        return self.label_dense

    def first_stage(self, k: int, train: bool = False) -> list[Run]:
        """The evaluation (or training) queries' first-stage runs the teacher re-ranks (top ``k`` each):
        BM25's, and the retriever ``mining.retrieval`` adds to it (zero-shot dense, or the members: out
        of fold on training queries)."""
        retrieval, qrels = self.ctx.cfg.mining.retrieval, self.ctx.train_qrels if train else self.ctx.eval_qrels
        bm25 = self.train_run if train else self.eval_run
        if retrieval == "bm25":
            return [bm25]
        if retrieval == "bm25+dense":
            return [bm25, steps.dense_run(self.base_encoder, self.store, self.ctx, qrels, k=k)]
        texts = {q: self.ctx.queries[q].text for q in qrels}
        return [bm25, self.members().retrieve(self.store, texts, k)]


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
    two_stage = cfg.mining.retrieval == "bm25+label_dense"
    # the members' groups are exactly a bm25+dense recipe's (same cache), so its trained members serve both
    first = dataclasses.replace(ctx, cfg=dataclasses.replace(
        cfg, mining=dataclasses.replace(cfg.mining, retrieval="bm25+dense"))) if two_stage else ctx
    cand_run, cand_key = steps.candidate_run(first, train_run, bm25_key, base_encoder, store)
    groups, mined_key = steps.mine(first, cand_run, cand_key)
    m = Mined(ctx, train_run, eval_run, bm25_key, base_encoder, store, cand_run, groups, mined_key, groups)
    if two_stage:
        m.cand_run, m.groups, m.mined_key = member_mined(m)
    return m


def member_mined(m: Mined) -> tuple[Run, list[TrainGroup], str]:
    """The second mining stage of ``bm25+label_dense``: BM25's and the members' top ``mining.depth`` of
    each training query, fused by reciprocal rank, mined as any candidate run (module docstring).

    Keyed by BM25's run and the members' key (which holds the first-stage groups they trained on).
    """
    ctx, depth = m.ctx, m.ctx.cfg.mining.depth
    cand_run = steps.fused_candidates(m.first_stage(depth, train=True), depth)
    groups, key = steps.mine(ctx, cand_run, cache_key("bm25+label-dense-v1", m.bm25_key, m.members().key))
    return cand_run, groups, key
