"""The input of every densekd loss: student, in-batch and teacher scores of one batch.

Units
-----
Every tensor here holds **raw scores**: dot products of embeddings or ColBERT MaxSim sums, i.e. logits
before any temperature or softmax. :class:`ScoreBatch.teacher` holds raw teacher logits (the
``TrainGroup.teacher_scores`` column), never probabilities; each loss applies its own temperature and
softmax.

Layout
------
``B`` queries, each with a group of ``G`` candidates; candidate 0 is the positive. Passage embeddings
are flattened group-major: candidate ``j`` of query ``i`` is row ``i * G + j`` of ``p[B * G, H]``, so in
the in-batch matrix ``in_batch[B, N]`` query ``i``'s positive sits at column ``offset + i * G``
(``offset = 0`` on a single process).

Other queries' copies of a positive
-----------------------------------
A passage can sit in the batch twice: as query ``i``'s positive and as another query's positive or
mined negative (on SciFact 58 % of the training queries share a positive with another query). For query
``i`` such a column is a false negative. ``ScoreBatch.in_batch_exclude[B, N]`` marks, for each query, the
columns *outside its own group* that hold one of its labelled positives (:func:`positive_repeats` builds
it from hashed passage ids); the in-batch losses (InfoNCE, in-batch KL) leave them out of the query's
softmax. (DPR's and Tevatron's in-batch losses keep them as negatives, though the labels say otherwise.)

Distributed training
--------------------
``in_batch`` may hold the local queries against every rank's passages (gathered by
:func:`densekd.scores.global_in_batch`); every loss stays a mean over the **local** batch, and
:mod:`densekd.scores.distributed` explains why that gives the exact global-batch gradient under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from densekd.scores import gather_with_grad, world_size


@dataclass
class ScoreBatch:
    """Everything a loss needs for one batch: student, in-batch and teacher scores (raw logits).

    Attributes
    ----------
    student
        ``[B, G]`` student scores of each query's candidate group; column 0 is the positive.
    in_batch
        ``[B, N]`` each local query against every passage of the (possibly gathered) batch, or
        ``None``. ``N = B * G`` on one process; query ``i``'s positive is column
        ``in_batch_offset + i * G``.
    teacher
        ``[B, G]`` raw teacher logits/scores for the same candidates, or ``None``.
    weights
        ``[B]`` non-negative per-instance weights (e.g. self-paced selection), or ``None`` = uniform.
        Every loss becomes ``sum(w * loss_i) / sum(w)`` over the local batch.
    mask
        ``[B, G]`` bool, ``False`` = padded candidate, excluded from every loss. Integer masks are
        converted. The positive (column 0) must be real; a row whose positive is padded is dropped by
        the losses that need it.
    in_batch_mask
        ``[N]`` bool column mask for ``in_batch``. When ``None`` and ``mask`` is set, it defaults to
        ``mask.reshape(-1)``, which is only possible when ``in_batch`` covers the local passages alone;
        gathered batches must pass the gathered mask (:func:`global_in_batch` returns it).
    in_batch_offset
        Number of ``in_batch`` columns that belong to earlier ranks (``0`` on one process).
    in_batch_exclude
        ``[B, N]`` bool or ``None``; ``True`` = a column query ``i`` must not count as a negative: a copy
        of one of its labelled positives in another query's group (module docstring,
        :func:`positive_repeats`). Never set at a query's own group columns.
    label_mask
        ``[B, G]`` bool or ``None``; ``False`` = a candidate without a label: a synthetic one (an ADAM
        dark example such as a masked copy of the positive), or every candidate of a query from a
        *label-free* group (a teacher without passage labels; its column 0 is the teacher's favourite,
        not a positive). Teacher-based losses score them like any candidate; label-based losses (InfoNCE)
        do not count a dark example as a negative of its own query (other queries still see it as an
        in-batch negative) and refuse a batch with a label-free query (:meth:`contrastive_masks`).
    heads
        Extra score heads of a multi-head student over the *same* ``[B, G]`` candidates, by name
        (e.g. ``{"colbert": ScoreBatch(...)}`` from an ERNIE-Search model, whose dense head is this
        batch itself), or ``None``. Single-head losses ignore them; a loss that needs one reads it
        with :meth:`head`.

    Examples
    --------
    >>> s = ScoreBatch(student=torch.zeros(2, 3), in_batch=torch.zeros(2, 6))
    >>> s.batch_size, s.group_size, s.positive_columns().tolist()
    (2, 3, [0, 3])
    """

    student: Tensor
    in_batch: Tensor | None = None
    teacher: Tensor | None = None
    weights: Tensor | None = None
    mask: Tensor | None = None
    in_batch_mask: Tensor | None = None
    in_batch_offset: int = 0
    heads: dict[str, ScoreBatch] | None = None
    label_mask: Tensor | None = None
    in_batch_exclude: Tensor | None = None

    def __post_init__(self) -> None:
        if self.student.ndim != 2:
            raise ValueError(f"student scores must be [B, G], got shape {tuple(self.student.shape)}")
        b, g = self.student.shape
        if self.teacher is not None and self.teacher.shape != self.student.shape:
            raise ValueError(
                f"teacher scores {tuple(self.teacher.shape)} do not match student scores {(b, g)}"
            )
        if self.weights is not None:
            if self.weights.shape != (b,):
                raise ValueError(f"weights must be [B]={b}, got shape {tuple(self.weights.shape)}")
            # one host sync per batch; a negative weight would make the normalised mean meaningless
            if bool((self.weights < 0).any()):
                raise ValueError("weights must be non-negative")
        if self.mask is not None:
            if self.mask.shape != self.student.shape:
                raise ValueError(f"mask {tuple(self.mask.shape)} does not match student scores {(b, g)}")
            self.mask = self.mask.bool()
        if self.label_mask is not None:
            if self.label_mask.shape != self.student.shape:
                raise ValueError(f"label_mask {tuple(self.label_mask.shape)} does not match student scores {(b, g)}")
            self.label_mask = self.label_mask.bool()
        if self.in_batch is not None:
            self._check_in_batch(b, g)
        for name, head in (self.heads or {}).items():
            if head.student.shape != self.student.shape:
                raise ValueError(f"score head {name!r} has shape {tuple(head.student.shape)}, the primary "
                                 f"scores {(b, g)}: every head must score the same candidates")

    def _check_in_batch(self, b: int, g: int) -> None:
        assert self.in_batch is not None
        if self.in_batch.ndim != 2 or self.in_batch.shape[0] != b:
            raise ValueError(f"in_batch must be [B={b}, N], got shape {tuple(self.in_batch.shape)}")
        n = self.in_batch.shape[1]
        last_positive = self.in_batch_offset + (b - 1) * g
        if self.in_batch_offset < 0 or (b > 0 and last_positive >= n):
            raise ValueError(
                f"in_batch has {n} columns but in_batch_offset={self.in_batch_offset} with B={b}, G={g} "
                f"puts the last positive at column {last_positive}"
            )
        if self.in_batch_mask is not None:
            if self.in_batch_mask.shape != (n,):
                raise ValueError(
                    f"in_batch_mask must be [N]={n}, got shape {tuple(self.in_batch_mask.shape)}"
                )
            self.in_batch_mask = self.in_batch_mask.bool()
        elif self.mask is not None:
            if n != b * g or self.in_batch_offset != 0:
                raise ValueError(
                    f"in_batch has {n} columns (gathered?) but only the local [B, G]={b, g} mask was "
                    "given; pass in_batch_mask for all columns (global_in_batch returns it)"
                )
            self.in_batch_mask = self.mask.reshape(-1)
        if self.in_batch_exclude is not None:
            if self.in_batch_exclude.shape != (b, n):
                raise ValueError(f"in_batch_exclude must be [B, N]={b, n}, got shape "
                                 f"{tuple(self.in_batch_exclude.shape)}")
            self.in_batch_exclude = self.in_batch_exclude.bool()

    @property
    def batch_size(self) -> int:
        """``B``, the number of local queries."""
        return self.student.shape[0]

    @property
    def group_size(self) -> int:
        """``G``, candidates per query (positive included)."""
        return self.student.shape[1]

    def head(self, name: str) -> ScoreBatch:
        """The extra score head ``name``; ``ValueError`` naming the available heads when it is absent."""
        if not self.heads or name not in self.heads:
            raise ValueError(f"no score head {name!r} in this batch (heads: {sorted(self.heads or {})}); "
                             "train a student whose compute_scores provides it (encoders.ernie.ErnieSearchModel)")
        return self.heads[name]

    def contrastive_masks(self) -> tuple[Tensor | None, Tensor | None]:
        """``(group mask [B, G], in-batch mask [B, N] or [N])`` for label-based losses (``None`` = all real).

        ``mask`` with each query's own unlabelled candidates (``label_mask`` False) switched off; in the
        in-batch matrix those own-group columns, plus the ``in_batch_exclude`` columns (copies of the
        query's positives in other groups). Raises ``ValueError`` when a
        query's column 0 is unlabelled (a label-free group): a label-based loss would learn the teacher's
        favourite as if it were a labelled positive.

        Examples
        --------
        >>> s = ScoreBatch(student=torch.zeros(2, 2), in_batch=torch.zeros(2, 4),
        ...                label_mask=torch.tensor([[True, False], [True, True]]))
        >>> group, in_batch = s.contrastive_masks()
        >>> group.tolist(), in_batch.int().tolist()
        ([[True, False], [True, True]], [[1, 0, 1, 1], [1, 1, 1, 1]])
        """
        if self.label_mask is None:
            return self.mask, self.in_batch_negatives()
        if not bool(self.label_mask[:, 0].all()):
            raise ValueError("a label-based loss (contrastive) got a query from a label-free group, whose first "
                             "candidate is the teacher's favourite, not a labelled positive: use losses over the "
                             "teacher's scores only (kl, mse, margin_mse, margin_ranking, listnet, ranknet)")
        group = self.label_mask if self.mask is None else self.mask & self.label_mask
        if self.in_batch is None:
            return group, self.in_batch_mask
        b, g = self.student.shape
        rows = self._column_rows()
        own = self.in_batch_offset + torch.arange(b, device=rows.device)[:, None] * g + torch.arange(g, device=rows.device)
        rows = rows.scatter(1, own, rows.gather(1, own) & self.label_mask.to(rows.device))
        return group, rows

    def _column_rows(self) -> Tensor:
        """``[B, N]`` bool: ``in_batch_mask`` per row, minus each row's ``in_batch_exclude`` columns."""
        assert self.in_batch is not None
        rows = torch.ones(self.in_batch.shape, dtype=torch.bool, device=self.in_batch.device)
        if self.in_batch_mask is not None:
            rows = rows & self.in_batch_mask[None, :]
        if self.in_batch_exclude is not None:
            rows = rows & ~self.in_batch_exclude.to(rows.device)
        return rows

    def in_batch_negatives(self) -> Tensor | None:
        """The mask of ``in_batch`` columns each query's softmax may use: ``[N]``, ``[B, N]`` or ``None``.

        ``in_batch_mask`` (``[N]``) as it is when ``in_batch_exclude`` is ``None``; otherwise a
        ``[B, N]`` mask that also drops each query's copies of its positives in other groups.
        """
        if self.in_batch is None or self.in_batch_exclude is None:
            return self.in_batch_mask
        return self._column_rows()

    def positive_columns(self) -> Tensor:
        """``[B]`` long: the ``in_batch`` column of each query's positive."""
        rows = torch.arange(self.batch_size, device=self.student.device)
        return self.in_batch_offset + rows * self.group_size


def positive_repeats(column_keys: Tensor, positive_keys: Tensor, in_batch_offset: int, group_size: int) -> Tensor:
    """``[B, N]`` bool: the in-batch columns outside query ``i``'s own group that hold one of its positives.

    Parameters
    ----------
    column_keys
        ``[N]`` int64 key of the passage in each (possibly gathered) in-batch column, group-major.
    positive_keys
        ``[B, P]`` int64 keys of each local query's labelled positives; ``-1`` pads (keys are >= 0).
    in_batch_offset
        Columns that belong to earlier ranks (``ScoreBatch.in_batch_offset``).
    group_size
        ``G``; query ``i``'s own columns are ``in_batch_offset + i * G + [0, G)``, never marked.

    Examples
    --------
    >>> keys = torch.tensor([7, 8, 9, 7])           # query 1's negative (column 3) is query 0's positive
    >>> positive_repeats(keys, torch.tensor([[7, -1], [9, -1]]), 0, 2).tolist()
    [[False, False, False, True], [False, False, False, False]]
    """
    b, n = positive_keys.shape[0], column_keys.shape[0]
    hit = (column_keys[None, :, None] == positive_keys[:, None, :]) & (positive_keys[:, None, :] >= 0)
    hit = hit.any(dim=-1)                                                     # [B, N]
    start = in_batch_offset + torch.arange(b, device=hit.device) * group_size  # [B]
    col = torch.arange(n, device=hit.device)
    own = (col[None, :] >= start[:, None]) & (col[None, :] < start[:, None] + group_size)
    return hit & ~own


def in_batch_repeats(keys: tuple[Tensor, Tensor] | None, offset: int, group_size: int,
                     gathered: bool) -> Tensor | None:
    """``[B, N]`` ``ScoreBatch.in_batch_exclude``: other groups' copies of each query's positives.

    ``gathered`` columns come from every rank (:func:`densekd.scores.global_in_batch`), so the keys are gathered the
    same way (a collective: every rank calls this in lockstep, which holds because every batch of
    :class:`~densekd.training.collator.DistillCollator` carries keys). ``None`` when the batch has no keys.
    """
    if keys is None:
        if gathered and world_size() > 1:
            # the other ranks may have keys and wait in the all-gather: fail here instead of hanging
            raise ValueError("a distributed batch without pid_keys / positive_keys: use DistillCollator (or a "
                             "collator that always adds both) so that every rank gathers the same keys")
        return None
    columns, positives = keys
    columns = columns.reshape(-1)
    if gathered:
        columns = gather_with_grad(columns)  # int keys: no autograd, a plain all-gather
    return positive_repeats(columns, positives.to(columns.device), offset, group_size)
