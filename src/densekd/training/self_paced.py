"""ADAM self-paced distillation: train on the instances the teacher is surest about first.

Tao et al. (arXiv 2212.10192) rate each training instance by the teacher's confidence and
concentrate distillation on the high-quality subset, widening it as training goes on. Here:

* **quality** (:func:`instance_quality`), from the group's raw teacher logits ``s`` over its
  *corpus* candidates (``pos_ids`` + ``neg_ids`` minus synthetic ``extra_passages`` ids), averaged
  over the group's positives ``p`` (the dataset rotates through them, one per draw):

  - ``"pos_prob"``: ``softmax(s / temperature)`` of ``p`` among ``{p} + negatives``;
  - ``"margin"``: ``s[p] - max(s[negatives])`` in raw logits (``temperature`` unused).

  Dark examples are left out on purpose: they are built to sit close to the positive, so counting
  them would rate an instance low exactly because its dark examples worked. A group without corpus
  negatives gets ``pos_prob = 1`` and ``margin = +inf`` (it ranks first; it carries no ranking
  signal to get wrong).
* **schedule** (:meth:`SelfPacedSelector.fraction`): the kept share at (integer) epoch ``e``;
  ``"linear"`` goes from ``start_fraction`` at epoch 0 to ``end_fraction`` at ``warm_epochs`` and
  stays; ``"step"`` is ``start_fraction`` before ``warm_epochs`` and ``end_fraction`` from then on;
  ``"none"`` is ``end_fraction`` throughout.
* **kept subset**: exactly ``K = round(fraction * N)`` instances (at least 1) of highest quality;
  ties go to the lower index, so it is deterministic.

Data contract
-------------
:class:`SelfPacedDataset` wraps a :class:`~densekd.training.dataset.TrainGroupDataset` (groups with
``teacher_scores``) and keeps its length ``N`` and item format, so the HF Trainer's step count and
learning-rate schedule are those of plain training:

* ``mode="select"``: position ``i`` of epoch ``e`` is kept instance ``kept[i % K]`` (kept list in a
  per-``(seed, e)`` shuffled order, so which instances get the extra draw when ``K`` does not divide
  ``N`` rotates). Each kept instance is drawn ``N / K`` times (up to rounding). An instance's ``d``-th
  draw over the whole run samples its negatives as :class:`TrainGroupDataset` does at epoch ``d``,
  so repeated draws see new negatives (and rotate positives) instead of identical copies; with
  ``K = N`` this is exactly the wrapped dataset.
* ``mode="weight"``: items of the wrapped dataset unchanged plus ``"weight": 1.0`` for kept
  instances and ``0.0`` for the others. :class:`~densekd.training.collator.DistillCollator` stacks
  them into ``weights[B]`` and the losses compute ``sum(w * loss_i) / sum(w)``: dropped instances
  cost compute but still serve as in-batch negatives for the kept ones. Binary weights (rather than
  soft, rank-decaying ones) make ``end_fraction = 1`` exactly plain training.

Per-epoch statistics (fraction and count kept, mean/min/max quality of the kept instances) are
logged through :mod:`logging` by :meth:`SelfPacedDataset.set_epoch` and, with
:class:`SelfPacedLogCallback`, added to the trainer's log records as ``self_paced_*``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from densekd.data.types import TrainGroup
from densekd.training.dataset import TrainGroupDataset

__all__ = ["SelfPacedConfig", "SelfPacedDataset", "SelfPacedLogCallback", "SelfPacedSelector",
           "instance_quality"]

logger = logging.getLogger(__name__)


@dataclass
class SelfPacedConfig:
    """Self-paced distillation settings (module docstring). The paper's exact schedule is not known to
    us; defaults are a plain curriculum from the more confident half to everything.

    Attributes
    ----------
    measure
        ``"pos_prob"`` (teacher probability of the positive, default) or ``"margin"`` (positive
        logit minus the best negative's).
    schedule
        ``"linear"`` (default), ``"step"`` or ``"none"``.
    start_fraction, end_fraction
        Kept share of instances at epoch 0 and from ``warm_epochs`` on, in ``(0, 1]`` (defaults 0.5
        and 1.0).
    warm_epochs
        Epochs over which the kept share widens (default 2: with 3 epochs, 0.5 -> 0.75 -> 1.0).
    mode
        ``"select"`` (draw only from the kept subset, default) or ``"weight"`` (0/1 instance weights).
    temperature
        Divides the teacher logits for ``"pos_prob"`` (default 1.0, the teacher's own distribution).
    """

    measure: str = "pos_prob"
    schedule: str = "linear"
    start_fraction: float = 0.5
    end_fraction: float = 1.0
    warm_epochs: int = 2
    mode: str = "select"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        choices = {"measure": ("pos_prob", "margin"), "schedule": ("linear", "step", "none"),
                   "mode": ("select", "weight")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"self_paced.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("start_fraction", "end_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"self_paced.{name} must be in (0, 1], got {getattr(self, name)}")
        if not isinstance(self.warm_epochs, int) or self.warm_epochs < 0:
            raise ValueError(f"self_paced.warm_epochs must be an integer >= 0, got {self.warm_epochs!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"self_paced.temperature must be positive and finite, got {self.temperature}")


def _group_quality(group: TrainGroup, measure: str, temperature: float) -> float:
    scores = group.teacher_scores
    if scores is None:
        raise ValueError(f"query {group.qid!r} has no teacher_scores: self-paced selection needs annotated groups")
    extra = group.extra_passages or {}
    positives = list(dict.fromkeys(group.pos_ids))
    negatives = [n for n in dict.fromkeys(group.neg_ids) if n not in extra and n not in positives]
    neg = np.array([scores[n] for n in negatives], dtype=np.float64)
    values = []
    for p in positives:
        if not negatives:
            values.append(1.0 if measure == "pos_prob" else math.inf)
        elif measure == "pos_prob":
            # log-sum-exp form: exact and overflow-free for large logits / small temperatures
            logits = np.concatenate([[scores[p]], neg]) / temperature
            values.append(float(np.exp(logits[0] - np.logaddexp.reduce(logits))))
        else:
            values.append(float(scores[p] - neg.max()))
    return float(np.mean(values))


def instance_quality(groups: Sequence[TrainGroup], measure: str = "pos_prob", temperature: float = 1.0) -> np.ndarray:
    """Teacher-confidence quality of each group, ``float64[N]`` (higher = better; module docstring).

    Parameters
    ----------
    groups
        Annotated groups (``teacher_scores`` = raw logits).
    measure
        ``"pos_prob"`` or ``"margin"``.
    temperature
        Softmax temperature of ``"pos_prob"``.

    Examples
    --------
    >>> g = TrainGroup("q", ["p"], ["n", "dark:mix:q:0"], {"p": 2.0, "n": 0.0, "dark:mix:q:0": 5.0},
    ...                {"dark:mix:q:0": "text"})
    >>> instance_quality([g], "margin").tolist(), round(float(instance_quality([g])[0]), 4)
    ([2.0], 0.8808)
    """
    return np.array([_group_quality(g, measure, temperature) for g in groups], dtype=np.float64)


class SelfPacedSelector:
    """Per-epoch kept subset (or weights) of ``N`` training instances by teacher-confidence quality.

    Parameters
    ----------
    groups
        The annotated training groups, in dataset order.
    cfg
        :class:`SelfPacedConfig`.

    Examples
    --------
    >>> groups = [TrainGroup(f"q{i}", ["p"], ["n"], {"p": float(i), "n": 0.0}) for i in range(4)]
    >>> sel = SelfPacedSelector(groups, SelfPacedConfig(start_fraction=0.5, warm_epochs=2))
    >>> [sel.fraction(e) for e in range(4)], sel.kept(0).tolist(), sel.weights(0).tolist()
    ([0.5, 0.75, 1.0, 1.0], [3, 2], [0.0, 0.0, 1.0, 1.0])
    """

    def __init__(self, groups: Sequence[TrainGroup], cfg: SelfPacedConfig):
        if not groups:
            raise ValueError("SelfPacedSelector needs at least one group")
        self.cfg = cfg
        self.quality = instance_quality(groups, cfg.measure, cfg.temperature)
        # stable sort of -quality: equal qualities keep index order, so the subset is deterministic
        self.order = np.argsort(-self.quality, kind="stable")

    def __len__(self) -> int:
        return len(self.quality)

    def fraction(self, epoch: int) -> float:
        """Scheduled kept share at ``epoch`` (module docstring)."""
        c = self.cfg
        if c.schedule == "none" or c.warm_epochs == 0:
            return c.end_fraction
        if c.schedule == "step":
            return c.start_fraction if epoch < c.warm_epochs else c.end_fraction
        return c.start_fraction + (c.end_fraction - c.start_fraction) * min(1.0, epoch / c.warm_epochs)

    def n_kept(self, epoch: int) -> int:
        """``K = round(fraction(epoch) * N)``, at least 1."""
        return max(1, round(self.fraction(epoch) * len(self)))

    def kept(self, epoch: int) -> np.ndarray:
        """Indices of the ``K`` highest-quality instances, best first, ``int64[K]``."""
        return self.order[: self.n_kept(epoch)]

    def weights(self, epoch: int) -> np.ndarray:
        """``float32[N]``: 1 for the kept instances, 0 for the others."""
        w = np.zeros(len(self), dtype=np.float32)
        w[self.kept(epoch)] = 1.0
        return w

    def epoch_stats(self, epoch: int) -> dict[str, float]:
        """Fraction and count kept and the kept instances' quality (mean, min, max)."""
        q = self.quality[self.kept(epoch)]
        return {"fraction": round(self.n_kept(epoch) / len(self), 4), "kept": int(len(q)),
                "quality_mean": float(q.mean()), "quality_min": float(q.min()), "quality_max": float(q.max())}


class SelfPacedDataset:
    """:class:`TrainGroupDataset` restricted to (or weighted by) the self-paced subset of each epoch.

    Parameters
    ----------
    dataset
        The wrapped dataset (its groups must be the selector's, in the same order).
    selector
        The :class:`SelfPacedSelector`; its ``cfg.mode`` picks select or weight mode.

    Notes
    -----
    Map-style (``__len__`` / ``__getitem__``) and :meth:`set_epoch`, which
    :class:`~densekd.training.trainer.DistillTrainer` calls every epoch through its
    ``EpochSetterCallback``; items are pure functions of ``(seed, epoch, position)``, as for the
    wrapped dataset.
    """

    def __init__(self, dataset: TrainGroupDataset, selector: SelfPacedSelector):
        if len(dataset) != len(selector):
            raise ValueError(f"dataset has {len(dataset)} groups but the selector rates {len(selector)}")
        self.dataset, self.selector = dataset, selector
        self.mode = selector.cfg.mode
        self.epoch = -1
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.dataset)

    def _slots(self, epoch: int) -> np.ndarray:
        """Kept instances in the order that positions ``i % K`` read them at ``epoch``."""
        rng = np.random.default_rng([self.dataset.seed, epoch, 0x5E1F])
        return rng.permutation(self.selector.kept(epoch))

    def _draws(self, slots: np.ndarray) -> np.ndarray:
        """``int64[N]``: times each instance is drawn in an epoch laid out by ``slots``."""
        n, k = len(self), len(slots)
        counts = np.zeros(n, dtype=np.int64)
        counts[slots] = (n - 1 - np.arange(k)) // k + 1  # positions j, j + K, ... below N
        return counts

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s subset and log its statistics."""
        epoch = int(epoch)
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.dataset.set_epoch(epoch)
        if self.mode == "select":
            self.slots = self._slots(epoch)
            # draws of each instance in earlier epochs: the d-th draw samples negatives as epoch d
            self.previous_draws = sum((self._draws(self._slots(e)) for e in range(epoch)),
                                      np.zeros(len(self), dtype=np.int64))
        else:
            self.item_weights = self.selector.weights(epoch)
        logger.info("self-paced epoch %d: %s", epoch, self.selector.epoch_stats(epoch))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = range(len(self))[int(i)]  # bounds check
        if self.mode == "weight":
            return {**self.dataset[i], "weight": float(self.item_weights[i])}
        k = len(self.slots)
        idx = int(self.slots[i % k])
        draw_epoch = int(self.previous_draws[idx]) + i // k
        return self.dataset.item(idx, epoch=draw_epoch)  # the shared dataset's epoch stays as it is


class SelfPacedLogCallback(TrainerCallback):
    """Put each epoch's self-paced statistics into the trainer's next log record.

    :class:`~densekd.training.trainer.DistillTrainer` collects them through :meth:`pop_pending_logs`
    (keys ``self_paced_fraction``, ``self_paced_kept``, ``self_paced_quality_{mean,min,max}``).
    """

    def __init__(self, dataset: SelfPacedDataset):
        self.selector = dataset.selector
        self._pending: dict[str, float] = {}

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        # computed from the epoch number, not read from the dataset: no ordering between callbacks
        stats = self.selector.epoch_stats(int(state.epoch or 0))
        self._pending = {f"self_paced_{k}": round(float(v), 4) for k, v in stats.items()}

    def pop_pending_logs(self) -> dict[str, float]:
        """Statistics not yet logged; clears them."""
        pending, self._pending = self._pending, {}
        return pending
