"""The ensemble teacher's dense members: labels-only retrievers, cross-fitted over the training queries.

Why cross-fitting. A teacher trained on the same labels as the student knows nothing new *on its own
training queries*: there it has fitted the labels, and its scores of the positives are near-certain.
What it does know is how to rank queries it has not seen (on SciFact dev a labels-only query-side
student reaches ~0.77 nDCG@10, BM25 0.69, and the two fused rank above both). Cross-fitting hands the
student that knowledge on the training queries too: the queries are split into ``folds`` by a hash of
their id, and each fold's candidates are scored by members trained on the *other* folds only. So the
teacher signal a training group carries has the quality the teacher has on unseen queries, and fusion
weights can be chosen on these out-of-fold scores of training queries, never on dev.

Members are :func:`~densekd.pipeline.student.train_student` runs with a labels-only InfoNCE loss in
``query_only`` mode (the frozen passage tower's cached corpus vectors serve every member), for each
seed in ``teacher.label_dense.seeds``: ``folds x seeds`` out-of-fold members plus ``seeds`` members on
all training queries, which score every query outside the training set (dev, a new user's queries).

Contract
--------
* :func:`train_label_dense` -> :class:`LabelDense` (model folders; each cached on its own key, in
  ``cache_dir/label_dense/<key>/<member>/``, resumable like any student).
* :meth:`LabelDense.scores` -> :data:`~densekd.data.types.Run`: the mean over seeds of the members'
  cosines ``q . p`` for each query's candidates (raw scores; fusion z-normalises them per query).
* :meth:`LabelDense.retrieve` -> :data:`~densekd.data.types.Run`: the top ``k`` of the whole corpus by
  that same mean score (out-of-fold members for training queries), the candidates of
  ``mining.retrieval: bm25+label_dense``.
* With ``teacher.label_dense.passage_max_length`` unlike the student's, the members read their own
  corpus vectors at that length (:attr:`LabelDense.store`; with ADAM dark examples added by
  :func:`~densekd.pipeline.run.fused_groups`), whatever store the caller passes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densekd.data.hashing import seeded_hash
from densekd.data.types import Run, TrainGroup
from densekd.pipeline import steps
from densekd.pipeline.cache import cache_key
from densekd.pipeline.student import _student_settings, train_student

log = logging.getLogger(__name__)


def assign_folds(qids: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """``qid -> fold`` in ``[0, folds)`` from a hash of ``(seed, qid)``.

    A query's fold does not depend on the other queries, so adding training queries never moves the
    old ones (their members' caches stay valid for the folds that did not change).

    Examples
    --------
    >>> few, more = assign_folds(["q1", "q2"], 2), assign_folds(["q3", "q2", "q1"], 2)
    >>> few == {q: more[q] for q in few}
    True
    """
    if folds < 2:
        raise ValueError(f"teacher.label_dense.folds must be >= 2 for cross-fitting, got {folds}")
    return {q: seeded_hash(seed, q) % folds for q in qids}


@dataclass
class LabelDense:
    """Trained members of the labels-only dense teacher.

    Attributes
    ----------
    fold_of
        Training query id -> its fold.
    fold_models
        ``fold_models[f]``: the member folders (one per seed) trained without fold ``f``.
    full_models
        Member folders (one per seed) trained on every training query.
    train_seconds
        Training time of all members together (as measured when each was trained; cached ones too).
    store
        The members' own frozen corpus vectors when they read passages at another length than the
        student (``None``: they share the caller's store).
    key
        The members' cache key (what they were trained on and how): keys what is derived from them.
    """

    fold_of: dict[str, int]
    fold_models: list[list[Path]]
    full_models: list[Path]
    train_seconds: float = 0.0
    store: Any = None
    key: str = ""

    def encoder(self, folder: Path) -> Any:
        """The member in ``folder``, loaded once (scoring one query at a time stays cheap)."""
        from densekd.encoders.dense import DenseEncoder

        cache = self.__dict__.setdefault("_loaded", {})
        if folder not in cache:
            cache[folder] = DenseEncoder.from_pretrained(folder)
        return cache[folder]

    def vectors(self, store: Any) -> Any:
        """The passage vectors the members read: their own (:attr:`store`) when they have them, else ``store``."""
        return self.store if self.store is not None else store

    def _by_members(self, qids: Sequence[str]) -> dict[int, list[str]]:
        """Queries grouped by who scores them: fold ``f`` (members trained without it), ``-1`` (all-query members)."""
        out: dict[int, list[str]] = {}
        for qid in qids:
            out.setdefault(self.fold_of.get(qid, -1), []).append(qid)
        return out

    def _members(self, fold: int) -> list[Path]:
        return self.full_models if fold < 0 else self.fold_models[fold]

    def _index(self, store: Any) -> Any:
        """A Flat index of ``store``, built once (one query at a time, e.g. latency runs, stays cheap)."""
        cache = self.__dict__.setdefault("_indexes", {})
        if id(store) not in cache:  # the store is kept beside its index, so its id cannot be reused
            cache[id(store)] = (store, store.to_faiss("Flat", show_progress=False))
        return cache[id(store)][1]

    def retrieve(self, store: Any, texts: Mapping[str, str], k: int) -> Run:
        """Each query's top ``k`` passages of the whole corpus by :meth:`scores` (mean cosine over seeds).

        Exact: the members share one set of passage vectors, so the mean of their dot products is the dot
        product with their mean query vector, and one Flat search of that vector ranks by the mean score.
        ``store`` as in :meth:`scores` (an ``EmbeddingStore``; ignored when the members have their own).
        """
        index = self._index(self.vectors(store))
        out: Run = {}
        for fold, qids in self._by_members(list(texts)).items():
            q = np.mean([self.encoder(m).encode_queries([texts[qid] for qid in qids]) for m in self._members(fold)],
                        axis=0)
            out.update(index.search(np.ascontiguousarray(q, dtype=np.float32), qids, k=k))
        return out

    def scores(self, store: Any, texts: Mapping[str, str], candidates: Mapping[str, Sequence[str]]) -> Run:
        """Mean cosine over seeds of each query's candidates; a training query is scored by the members
        that never saw it, any other query by the members trained on all training queries.

        ``store`` holds the frozen passage vectors every member shares (``.embeddings[N, D]`` with
        ``.ids`` or ``.row_of``; rows for ADAM dark examples too when they are candidates); ignored
        when the members have their own (:attr:`store`).
        """
        store = self.vectors(store)
        out: Run = {}
        for fold, qids in self._by_members(list(candidates)).items():
            cands = {qid: candidates[qid] for qid in qids}
            runs = [steps.dense_signal(self.encoder(m), store, texts, cands) for m in self._members(fold)]
            out.update({qid: {pid: float(np.mean([r[qid][pid] for r in runs])) for pid in cands[qid]}
                        for qid in cands})
        return out


def member_length(section: Any, student: Any) -> int:
    """Tokens of each passage the members read: ``section.passage_max_length``, else the student's."""
    return section.passage_max_length or student.passage_max_length


def member_student(student: Any, section: Any, seed: int, n_queries: int) -> Any:
    """The student section of one labels-only member: InfoNCE, ``query_only``, the member's seed and
    passage length.

    The batch holds at most the member's ``n_queries`` (a small fold would otherwise make no step).
    """
    return dataclasses.replace(
        student, train_mode="query_only", architecture="dense", passage_head=None, loss={"contrastive": {"temperature": section.temperature}},
        batch_size=max(1, min(student.batch_size, n_queries)), group_size=section.group_size or student.group_size,
        epochs=section.epochs, max_steps=-1, learning_rate=section.learning_rate, seed=seed, eval_steps=0,
        passage_max_length=member_length(section, student),
        dark_examples=dataclasses.replace(student.dark_examples, enabled=False),
        self_paced=dataclasses.replace(student.self_paced, enabled=False))


def train_label_dense(ctx: steps.Context, groups: list[TrainGroup], store: Any) -> LabelDense:
    """Train (or reuse) every member: ``folds x seeds`` out-of-fold ones and ``seeds`` on all queries.

    Members read labels only (each group's positives and mined negatives; no teacher scores), so
    the cache key is the groups' ids, the member settings and the frozen passage vectors: ``store``,
    or the members' own corpus vectors when ``passage_max_length`` differs from the student's.
    """
    from densekd.mining.pseudo_queries import PREFIX

    section = ctx.cfg.teacher.label_dense
    own_store = None
    length = member_length(section, ctx.cfg.student)
    if length != ctx.cfg.student.passage_max_length:
        own_store = store = steps.corpus_embeddings(ctx, ctx.cfg.student.model, length, "label-dense")
    # members learn from judged queries only: self-supervised ones are scored like any unseen query
    groups = [g for g in groups if not g.qid.startswith(PREFIX)]
    fold_of = assign_folds([g.qid for g in groups], section.folds, section.fold_seed)
    sizes = [sum(f == k for f in fold_of.values()) for k in range(section.folds)]
    if min(sizes) == 0:
        raise ValueError(f"teacher.label_dense.folds={section.folds}: {len(groups)} training queries leave a "
                         f"fold empty (fold sizes {sizes}); use fewer folds or more training queries")
    labels = [[g.qid, g.pos_ids, g.neg_ids] for g in groups]
    # members are keyed without the seed list: a run with seeds [0] reuses a [0, 1, 2] run's seed-0 members;
    # their passage length is in the store's fingerprint. What they inherit from the student section
    # (group and batch size, start model, query length) is in the key too: v1 left it out, so recipes
    # whose students differed overwrote each other's members in one folder
    settings = {k: v for k, v in dataclasses.asdict(section).items()
                if k not in ("seeds", "passage_max_length", "group_size")}  # the effective group size: inherited
    inherited = _student_settings(member_student(ctx.cfg.student, section, 0, len(groups)))
    inherited.pop("seed")
    root = ctx.cache / "label_dense" / cache_key("label-dense-v2", labels, settings, inherited, store.fingerprint)
    start = time.perf_counter()
    cached: list[bool] = []
    seconds: list[float] = []

    def member(name: str, subset: list[TrainGroup], seed: int) -> Path:
        cfg = dataclasses.replace(ctx.cfg, output_dir=str(root / name),
                                  student=member_student(ctx.cfg.student, section, seed, len(subset)))
        sub = dataclasses.replace(ctx, cfg=cfg, timings={})
        model_dir, summary = train_student(sub, subset, store)
        cached.append(sub.timings["student"]["cached"])
        seconds.append(float(summary.get("train_seconds", 0.0)))
        log.info("label-dense member %s: %d training queries", name, len(subset))
        return model_dir

    fold_models = [[member(f"fold{f}-seed{s}", [g for g in groups if fold_of[g.qid] != f], s)
                    for s in section.seeds] for f in range(section.folds)]
    full_models = [member(f"all-seed{s}", groups, s) for s in section.seeds]
    ctx.record("teacher:label-dense", start, all(cached))
    return LabelDense(fold_of, fold_models, full_models, round(sum(seconds), 1), own_store, root.name)
