"""Training groups as a map-style torch dataset with seeded, epoch-rotated negative sampling.

Data contract
-------------
``TrainGroupDataset(groups, queries, corpus, ...)[idx]`` is::

    {"qid": str,
     "query": str,                        # Query.text
     "pids": list[str],                   # G ids, the positive first
     "passages": list[str],               # G texts aligned with pids (Passage.full_text() or extra text)
     "teacher_scores": list[float] | None,  # G raw teacher logits aligned with pids, or None
     "positives": list[str],              # every labelled positive id of the group ([] when label-free)
     "labelled": False}                   # only for a label-free group: pids[0] is no positive

Texts are looked up at ``__getitem__`` time: the dataset holds references to the caller's ``queries``
and ``corpus`` mappings and never copies them. Ids in ``TrainGroup.extra_passages`` (synthetic
candidates such as ADAM dark examples) resolve to those texts; every other id to the corpus.

Sampling
--------
Item ``idx`` at epoch ``e`` is a pure function of ``(seed, e, idx)``: the same in every dataloader
worker and process and in any access order, so resuming and DDP sharding see identical groups.

* Positive: one of ``pos_ids``, rotating through a per-``(seed, idx)`` shuffle by epoch. A label-free
  group (no ``pos_ids``; only with ``allow_label_free``) puts its teacher's favourite
  (:meth:`TrainGroup.anchor_id`) in that place and samples the others as its negatives; its items say
  ``"labelled": False`` so that the collator can tell label-based losses (module
  :mod:`densekd.training.collator`).
* ``"random"`` negatives: a per-``(seed, idx)`` shuffle of ``neg_ids`` read as a ring; epoch ``e`` takes
  the ``G - 1`` entries from position ``e * (G - 1)``. Every negative is used once before any repeats
  (tevatron's scheme), and the window moves each epoch whenever a group has more than ``G - 1``.
* ``"top"``: the first ``G - 1`` negatives in stored order (e.g. ranked by a retriever), every epoch.
* Too few negatives: the group is **padded by repeating** its negatives cyclically (the positive when
  there are none). Repeats are exact duplicate ids; :class:`~densekd.training.collator.DistillCollator`
  masks every repeated id out of the losses, so padding changes no loss value, it only keeps the
  ``[B, G]`` layout rectangular.
* ``extra_per_group = E > 0`` (ADAM: dark examples in every candidate list, *next to* the hard
  negatives rather than instead of some): the group's extra-passage ids leave the negative pool, the
  ``G - 1`` negatives are sampled from the rest as above, and the first ``E`` extra ids (stored order)
  follow, padded by repeats when a group has fewer. Items then hold ``G + E`` ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from densekd.data.types import Passage, Query, TrainGroup

NEGATIVE_SAMPLING_MODES: tuple[str, ...] = ("random", "top")
#: why a group without a positive is refused when label-free groups are not allowed
LABEL_FREE_REFUSED = "label-free groups need allow_label_free and a loss that reads no labels"


def sample_group_ids(group: TrainGroup, group_size: int, seed: int, epoch: int, idx: int,
                     negative_sampling: str = "random", extra_per_group: int = 0) -> list[str]:
    """The ``G`` candidate ids of one group: the positive, then ``G - 1`` negatives (module docstring),
    then, with ``extra_per_group = E > 0``, ``E`` of the group's extra-passage ids (``G + E`` in all).

    Parameters
    ----------
    group
        The training group.
    group_size
        ``G >= 1``.
    seed, epoch, idx
        Non-negative integers; the result is a pure function of them (and the group).
    negative_sampling
        ``"random"`` or ``"top"``.
    extra_per_group
        ``E >= 0``: extra passages (dark examples) appended to every list instead of sampled.

    Returns
    -------
    list[str]
        ``G + E`` ids, positive first; may contain repeats when the group is short.

    Examples
    --------
    >>> g = TrainGroup("q", ["p"], ["n1", "n2", "n3"])
    >>> sample_group_ids(g, 3, seed=0, epoch=0, idx=0, negative_sampling="top")
    ['p', 'n1', 'n2']
    >>> sample_group_ids(TrainGroup("q", ["p"], ["n1"]), 4, 0, 0, 0)
    ['p', 'n1', 'n1', 'n1']
    """
    negatives, tail = group.neg_ids, []
    if extra_per_group > 0:
        extra = group.extra_passages or {}
        negatives = [n for n in group.neg_ids if n not in extra]
        tail = [n for n in group.neg_ids if n in extra][:extra_per_group]
    positives = group.pos_ids
    if not group.labelled:  # label-free: the teacher's favourite leads, as a positive would (no label)
        positives = [group.anchor_id()]
        negatives = [n for n in negatives if n != positives[0]]
    head = _sample_corpus_ids(positives, negatives, group_size, seed, epoch, idx, negative_sampling)
    if extra_per_group > 0:
        pad = tail or head[-1:]  # repeats are masked out of the losses by the collator
        tail = [pad[k % len(pad)] for k in range(extra_per_group)]
    return head + tail


def _sample_corpus_ids(positives: list[str], negatives: list[str], group_size: int, seed: int, epoch: int,
                       idx: int, negative_sampling: str) -> list[str]:
    # one generator per (seed, idx): the shuffles are fixed for an item, the epoch only moves windows
    rng = np.random.default_rng([seed, idx])
    positive = positives[int(rng.permutation(len(positives))[epoch % len(positives)])]
    n_neg = group_size - 1
    if n_neg == 0:
        return [positive]
    if not negatives:
        return [positive] * group_size  # all padding: masked out by the collator
    if negative_sampling == "random":
        order = rng.permutation(len(negatives))
        start = epoch * n_neg
    else:
        order, start = np.arange(len(negatives)), 0
    return [positive] + [negatives[int(order[(start + k) % len(negatives)])] for k in range(n_neg)]


class TrainGroupDataset(Dataset):
    """Map-style dataset over :class:`~densekd.data.types.TrainGroup` records.

    Parameters
    ----------
    groups
        Training groups (kept by reference, indexed by position).
    queries
        ``qid -> Query``; must contain every group's ``qid``.
    corpus
        ``pid -> Passage``; must contain every candidate id that is not in the group's
        ``extra_passages``.
    group_size
        ``G``: 1 positive + ``G - 1`` negatives per item.
    seed
        Non-negative sampling seed (use the trainer's ``args.seed``).
    negative_sampling
        ``"random"`` or ``"top"`` (module docstring).
    extra_per_group
        ``E >= 0`` extra passages (dark examples) appended to every item (module docstring).
    check_ids
        Verify at construction that every id resolves, so a bad file fails before training starts
        rather than mid-epoch (dictionary look-ups only; no text is copied).
    allow_label_free
        Accept label-free groups (no positive, teacher scores for every candidate; module docstring of
        :mod:`densekd.data.types`). Off by default: a group without a positive is then an error.

    Examples
    --------
    >>> ds = TrainGroupDataset([TrainGroup("q1", ["d1"], ["d2"])], {"q1": Query("q1", "hi")},
    ...                        {"d1": Passage("d1", "a"), "d2": Passage("d2", "b")}, group_size=2)
    >>> ds[0]["pids"], ds[0]["passages"]
    (['d1', 'd2'], ['a', 'b'])
    """

    def __init__(self, groups: Sequence[TrainGroup], queries: Mapping[str, Query], corpus: Mapping[str, Passage],
                 group_size: int = 8, seed: int = 42, negative_sampling: str = "random", check_ids: bool = True,
                 extra_per_group: int = 0, allow_label_free: bool = False):
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
        if not isinstance(extra_per_group, int) or extra_per_group < 0:
            raise ValueError(f"extra_per_group must be an integer >= 0, got {extra_per_group!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if negative_sampling not in NEGATIVE_SAMPLING_MODES:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING_MODES}, got {negative_sampling!r}")
        self.groups = groups if isinstance(groups, list) else list(groups)
        self.queries = queries
        self.corpus = corpus
        self.group_size = group_size
        self.seed = seed
        self.negative_sampling = negative_sampling
        self.extra_per_group = extra_per_group
        self.allow_label_free = bool(allow_label_free)
        self.epoch = 0
        if check_ids:
            self._check_ids()

    def _check_ids(self) -> None:
        problems: list[str] = []
        for i, group in enumerate(self.groups):
            if not group.pos_ids and not (self.allow_label_free and group.teacher_scores is not None and group.neg_ids):
                problems.append(f"group {i} (query {group.qid!r}) has no positive" + (
                    " (a label-free group needs teacher scores and a candidate)" if self.allow_label_free else
                    f" ({LABEL_FREE_REFUSED})"))
            if group.qid not in self.queries:
                problems.append(f"group {i}: query {group.qid!r} not in queries")
            extra = group.extra_passages or {}
            for pid in (*group.pos_ids, *group.neg_ids):
                if pid in extra and pid in self.corpus:
                    problems.append(f"group {i}: extra passage id {pid!r} is also a corpus id (ambiguous)")
                elif pid not in extra and pid not in self.corpus:
                    problems.append(f"group {i}: passage {pid!r} neither in the corpus nor in extra_passages")
            if group.teacher_scores is not None and any(
                    p not in group.teacher_scores for p in (*group.pos_ids, *group.neg_ids)):
                problems.append(f"group {i} (query {group.qid!r}): teacher_scores miss some candidate ids")
            if len(problems) >= 5:
                break
        if problems:
            raise ValueError("invalid training groups: " + "; ".join(problems[:5]))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose negatives ``__getitem__`` returns (called at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def sample_ids(self, idx: int, epoch: int | None = None) -> list[str]:
        """The ``G (+ E)`` candidate ids of item ``idx`` at ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        return sample_group_ids(self.groups[idx], self.group_size, self.seed, epoch, idx, self.negative_sampling,
                                self.extra_per_group)

    def passage_text(self, group: TrainGroup, pid: str) -> str:
        """Text the encoder sees for candidate ``pid`` of ``group`` (extra passages first)."""
        extra = group.extra_passages
        if extra and pid in extra:
            return extra[pid]
        return self.corpus[pid].full_text()

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.item(idx)

    def item(self, idx: int, epoch: int | None = None) -> dict[str, Any]:
        """Item ``idx`` as drawn at ``epoch`` (default: the current one), without changing ``self.epoch``."""
        idx = range(len(self.groups))[int(idx)]  # bounds check + negative index -> the seed's position
        group = self.groups[idx]
        pids = self.sample_ids(idx, epoch)
        scores = group.teacher_scores
        item = {
            "qid": group.qid,
            "query": self.queries[group.qid].text,
            "pids": pids,
            "passages": [self.passage_text(group, pid) for pid in pids],
            "teacher_scores": None if scores is None else [float(scores[pid]) for pid in pids],
            # every labelled positive, not only the sampled one: another group's copy of any of them is no
            # negative of this query (losses.batch.positive_repeats)
            "positives": list(group.pos_ids),
        }
        if not group.labelled:  # only then: labelled items carry no "labelled" key
            if not self.allow_label_free:
                raise ValueError(f"group {idx} (query {group.qid!r}) has no positive ({LABEL_FREE_REFUSED})")
            item["labelled"] = False
        return item
