"""Trainer callbacks: cheap retrieval evaluation during training, and epoch hand-over to the dataset.

Data contract
-------------
* :class:`RetrievalEvalCallback` scores the student on dev ``queries`` / ``corpus`` / ``qrels``
  (:mod:`densekd.data.types` records). With a ``candidates`` :data:`~densekd.data.types.Run` (e.g. BM25
  top-100 of the dev queries) it only encodes the candidate passages and re-ranks them by dot product;
  without one it encodes the whole corpus (small dev corpora only). Metrics come from
  :func:`densekd.eval.metrics.evaluate`, averaged over the qrels queries that are in ``queries``;
  they are logged as ``<prefix><metric>`` (default ``eval_ndcg@10``).
* Logging: the metrics are handed to the trainer's next log record: :class:`DistillTrainer.log
  <densekd.training.trainer.DistillTrainer>` collects them through :meth:`pop_pending_logs`, so they
  reach ``state.log_history`` *and* every reporting integration in the same record as the training
  loss. Under a plain HF ``Trainer`` (which does not collect them) the callback appends its own record
  to ``state.log_history`` in ``on_log``.

Why :class:`EpochSetterCallback` exists (transformers 5.23 / accelerate 1.15)
----------------------------------------------------------------------------
The Trainer calls ``train_dataloader.set_epoch(epoch)`` before each epoch, and accelerate's
``DataLoaderShard.set_epoch`` forwards to the dataset only in an ``elif`` branch: on one process
(plain ``BatchSampler``) the dataset's ``set_epoch`` is reached, but under DDP the sampler is wrapped in
a ``BatchSamplerShard`` whose inner sampler has ``set_epoch``, that branch wins, and the dataset keeps
epoch 0, i.e. identical negatives every epoch. The callback sets the epoch explicitly in
``on_epoch_begin`` (before the epoch's dataloader iterator, hence its workers, is created), which is
idempotent where accelerate does it too. Persistent workers would still hold a stale copy, which
:class:`~densekd.training.config.DistillConfig` refuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from densekd.data.types import Corpus, Qrels, Queries, Run
from densekd.encoders.cached_passages import PassageStateTable
from densekd.eval.metrics import check_metrics, evaluate
from densekd.index.passage_table import PassageEmbeddingTable
from densekd.teachers.rerank import dot_scores


class EpochSetterCallback(TrainerCallback):
    """Call ``dataset.set_epoch(int(state.epoch))`` at the start of every epoch (module docstring)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        # state.epoch is a float (1.5 mid-epoch after a resume): its floor is the epoch being entered
        self.dataset.set_epoch(int(state.epoch or 0))


def _passage_side_frozen(encoder: Any) -> bool:
    """True when nothing that produces passage vectors can change (query_only training)."""
    modules = [encoder.passage_model] + ([encoder.projection] if encoder.projection is not None else [])
    return encoder.passage_model is not encoder.query_model and not any(
        p.requires_grad for m in modules for p in m.parameters())


class RetrievalEvalCallback(TrainerCallback):
    """Evaluate the student's retrieval quality every ``every_n_steps`` optimizer steps.

    Parameters
    ----------
    queries, corpus, qrels
        Dev data; only queries in both ``queries`` and ``qrels`` are evaluated.
    candidates
        Run to re-rank (``qid -> pid -> score``, only the ids are used), or ``None`` to search the
        whole corpus exhaustively.
    metrics
        :func:`densekd.eval.metrics.evaluate` names.
    every_n_steps
        Evaluation period in optimizer steps (``>= 1``).
    batch_size
        Encoding batch size.
    prefix
        Prefix of the logged metric names.
    passage_embeddings
        Precomputed passage vectors (anything :meth:`PassageEmbeddingTable.coerce` accepts, e.g. the
        ``EmbeddingStore`` the pipeline already cached) for a frozen passage side: evaluations then
        never encode a passage. For a student with a passage head: its base model's token states
        (:class:`~densekd.index.token_states.PassageTokenStates`), read through the head at each evaluation.

    Notes
    -----
    Passage vectors are cached across evaluations when the passage side is frozen (``query_only``),
    so each evaluation then encodes only the queries. Evaluation runs on the main process only.
    """

    def __init__(self, queries: Queries, corpus: Corpus, qrels: Qrels, candidates: Run | None = None,
                 metrics: Sequence[str] = ("ndcg@10", "recall@100"), every_n_steps: int = 100,
                 batch_size: int = 64, prefix: str = "eval_", passage_embeddings: Any = None):
        check_metrics(metrics)
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.qids = [qid for qid in queries if qid in qrels]
        if not self.qids:
            raise ValueError("no dev query has relevance judgements")
        self.queries, self.corpus, self.candidates = queries, corpus, candidates
        self.qrels = {qid: qrels[qid] for qid in self.qids}
        self.metrics, self.every_n_steps = list(metrics), every_n_steps
        self.batch_size, self.prefix = batch_size, prefix
        self.pids = self._passage_ids()
        self._cached_passages: np.ndarray | None = None
        self._states = passage_embeddings if isinstance(passage_embeddings, PassageStateTable) else None
        if passage_embeddings is not None and self._states is None:
            table = PassageEmbeddingTable.coerce(passage_embeddings)
            self._cached_passages = np.asarray(table.embeddings[[table.row_of[pid] for pid in self.pids]])
        self._pending: dict[str, float] = {}

    def _passage_ids(self) -> list[str]:
        if self.candidates is None:
            return list(self.corpus)
        pids = sorted({pid for qid in self.qids for pid in self.candidates.get(qid, {})})
        missing = [pid for pid in pids if pid not in self.corpus]
        if missing:
            raise ValueError(f"{len(missing)} candidate passages are not in the corpus, e.g. {missing[:3]}")
        return pids

    # ------------------------------------------------------------------------------------- scoring
    def _passage_vectors(self, encoder: Any) -> np.ndarray:
        if self._states is not None:  # frozen tower, trained passage head: the head over the cached states
            return encoder.encode_cached_passages(self._states, self.pids, batch_size=self.batch_size)
        if self._cached_passages is not None and _passage_side_frozen(encoder):
            return self._cached_passages
        vectors = encoder.encode_passages([self.corpus[pid] for pid in self.pids], batch_size=self.batch_size,
                                          show_progress=False)
        self._cached_passages = vectors if _passage_side_frozen(encoder) else None
        return vectors

    def evaluate(self, encoder: Any) -> dict[str, float]:
        """Metrics of ``encoder`` (a :class:`~densekd.encoders.dense.DenseEncoder`) on the dev data."""
        p = self._passage_vectors(encoder)                                       # [P, D]
        q = encoder.encode_queries([self.queries[qid].text for qid in self.qids], batch_size=self.batch_size)
        if self.candidates is None:
            run = self._search(q, p)
        else:  # dot products of the candidates' vectors, rows in self.pids order
            run = dot_scores(q, self.qids, self.candidates, p, {pid: i for i, pid in enumerate(self.pids)})
        return evaluate(run, self.qrels, self.metrics)

    def _search(self, q: np.ndarray, p: np.ndarray) -> Run:
        k = min(len(self.pids), max(_cutoff(m) for m in self.metrics))
        scores = q @ p.T                                                         # [Q, P]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return {qid: {self.pids[j]: float(scores[qi, j]) for j in top[qi]} for qi, qid in enumerate(self.qids)}

    # ------------------------------------------------------------------------------------- hooks
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> TrainerControl:
        if state.global_step % self.every_n_steps != 0:
            return control
        # a log record at this step carries the metrics. Every rank must set it: the Trainer's logging
        # branch runs collectives (loss gather), so a rank-0-only flag would deadlock DDP.
        control.should_log = True
        if state.is_world_process_zero and model is not None:
            metrics = self.evaluate(model)
            self._pending = {f"{self.prefix}{name}": value for name, value in metrics.items()}
        return control

    def pop_pending_logs(self) -> dict[str, float]:
        """Metrics not yet logged (called by :meth:`DistillTrainer.log`); clears them."""
        pending, self._pending = self._pending, {}
        return pending

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if self._pending:  # a plain Trainer did not collect them: record them ourselves
            state.log_history.append({**self.pop_pending_logs(), "step": state.global_step})


def _cutoff(metric: str) -> int:
    """``k`` of ``"name@k"``; metrics over the full ranking default to 1000 candidates."""
    return int(metric.split("@")[1]) if "@" in metric else 1000
