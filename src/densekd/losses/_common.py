"""Reductions and masking shared by the densekd losses (private module).

Units: every input here is a raw score (logit); probabilities only exist inside these functions.
Shapes: ``B`` instances (queries), ``C`` candidates per instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from densekd.losses.batch import ScoreBatch


def weighted_mean(values: Tensor, weights: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Weighted mean of per-instance losses, ``[B] -> []``.

    Parameters
    ----------
    values
        ``[B]`` per-instance losses. Entries with zero effective weight may be non-finite (e.g. the loss
        of an all-padded row); they are excluded from the value *and* the gradient.
    weights
        ``[B]`` non-negative instance weights, or ``None`` for uniform. Treated as constants (detached):
        self-paced weights are a selection, not something to optimise through.
    valid
        ``[B]`` bool, ``False`` drops the instance (multiplies its weight by 0).

    Returns
    -------
    Tensor
        ``sum(w * values) / sum(w)``; exactly ``0`` (not NaN) when every weight is zero.

    Examples
    --------
    >>> weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])).item()
    1.5
    >>> weighted_mean(torch.tensor([1.0, float("inf")]), valid=torch.tensor([True, False])).item()
    1.0
    """
    w = torch.ones_like(values) if weights is None else weights.detach().to(values.dtype)
    if valid is not None:
        w = w * valid.to(values.dtype)
    # `where` rather than `values * w` alone: 0 * inf is NaN, in the forward pass and in the backward.
    values = torch.where(w > 0, values, torch.zeros_like(values))
    # clamp: with all-zero weights the numerator is exactly 0, so 0 / tiny = 0 instead of 0 / 0 = NaN.
    return (values * w).sum() / w.sum().clamp_min(torch.finfo(values.dtype).tiny)


def masked_log_softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    """``log_softmax`` over the last dim with padded candidates excluded, ``[B, C] -> [B, C]``.

    Padded entries come out as ``-inf`` (probability exactly 0) and receive zero gradient. A row whose
    candidates are *all* padded would be ``-inf - (-inf) = NaN``; it is returned as a finite uniform
    row instead and the caller drops it through a zero weight.

    Parameters
    ----------
    logits
        ``[B, C]`` raw scores, already divided by any temperature (dividing after the fill would turn
        a finite fill value into ``inf`` for temperatures below 1, hence ``-inf`` here).
    mask
        ``[B, C]`` (or broadcastable) bool, ``False`` = padded; ``None`` = nothing padded.
    """
    if mask is None:
        return torch.log_softmax(logits, dim=-1)
    mask = mask.expand_as(logits)
    logits = logits.masked_fill(~mask, float("-inf"))
    logits = logits.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return torch.log_softmax(logits, dim=-1)


def soft_cross_entropy_terms(
    student: Tensor, teacher: Tensor, mask: Tensor | None, student_temperature: float,
    teacher_temperature: float, detach_teacher: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Target probabilities and both log-distributions for listwise distillation, all ``[B, C]``.

    Returns ``(p, log_p, log_q)`` with ``p = softmax(teacher / Tt)``, ``log_q = log_softmax(student /
    Ts)``; padded entries are ``p = 0`` and ``log_p = log_q = 0`` so that products such as
    ``p * (log_p - log_q)`` are exactly 0 there (with ``-inf`` they would be NaN). The teacher is
    detached by default: it is a target, never trained through a distillation loss. Only a teacher
    that is itself being trained in the same step (ERNIE-Search's late-interaction head teaching the
    dense head on the fly) may keep its graph (``detach_teacher=False``). Math runs in float32 so
    fp16/bf16 autocast logits do not lose the tail of the softmax.
    """
    log_q = masked_log_softmax(student.float() / student_temperature, mask)
    p, log_p = teacher_distribution(teacher, mask, teacher_temperature, detach_teacher)
    if mask is not None:
        log_q = log_q.masked_fill(~mask.expand_as(log_q), 0.0)
    return p, log_p, log_q


def teacher_distribution(teacher: Tensor, mask: Tensor | None, temperature: float,
                         detach: bool = True) -> tuple[Tensor, Tensor]:
    """Target ``(p, log_p)``, both ``[B, C]``: ``softmax(teacher / temperature)`` over real candidates.

    Padded entries are exactly 0 in both (see :func:`soft_cross_entropy_terms`); float32 math; the
    teacher is detached unless ``detach=False``.
    """
    teacher = teacher.detach() if detach else teacher
    log_p = masked_log_softmax(teacher.float() / temperature, mask)
    p = log_p.exp()
    if mask is not None:
        mask = mask.expand_as(log_p)
        p = p.masked_fill(~mask, 0.0)  # all-padded rows came back uniform, not 0
        log_p = log_p.masked_fill(~mask, 0.0)
    return p, log_p


def check_pair_shape(student: Tensor, teacher: Tensor, loss_name: str) -> None:
    """Raise ``ValueError`` unless ``student`` and ``teacher`` are both ``[B, G]`` of the same shape.

    Parameters
    ----------
    student, teacher
        Raw scores given to a loss function.
    loss_name
        Named in the error message (e.g. ``"ScoreMSE"``).
    """
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(
            f"{loss_name} needs student and teacher scores of the same [B, G] shape, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )


def float_scores(student: Tensor, teacher: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Float32 student and detached float32 teacher scores, padded slots overwritten with 0.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores.
    mask
        ``[B, G]`` bool, ``False`` = padded, or ``None``. Padded slots may hold anything (even
        ``-inf``); they are set to 0 so that no inf/NaN reaches the value or the gradient.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``(s, t)``, both ``[B, G]`` float32.
    """
    s, t = student.float(), teacher.detach().float()
    if mask is not None:
        s, t = s.masked_fill(~mask, 0.0), t.masked_fill(~mask, 0.0)
    return s, t


def teacher_ordered_pair_mean(
    student: Tensor, teacher: Tensor, pair_loss: Callable[[Tensor], Tensor], mask: Tensor | None,
    weights: Tensor | None,
) -> Tensor:
    """Mean of ``pair_loss(s_j - s_k)`` over the pairs the teacher orders ``t_j > t_k``, then over rows.

    Shared by the pairwise losses (RankNet, max-margin ranking). Teacher ties give no pair; padded
    candidates are in no pair; rows without a pair are dropped (zero weight).

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores of the same shape; the teacher is detached and only its order matters.
    pair_loss
        Elementwise map of the ``[B, G, G]`` student differences ``s_j - s_k`` to per-pair losses.
    mask
        ``[B, G]`` bool, ``False`` = padded, or ``None``.
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    s, t = float_scores(student, teacher, mask)
    pairs = t[:, :, None] > t[:, None, :]  # [B, G, G]: candidate j should beat candidate k
    if mask is not None:
        pairs = pairs & mask[:, :, None] & mask[:, None, :]
    per_pair = pair_loss(s[:, :, None] - s[:, None, :])
    return masked_row_mean(per_pair, pairs, weights, dims=(1, 2))


def masked_row_mean(values: Tensor, real: Tensor | None, weights: Tensor | None,
                    dims: int | tuple[int, ...] = -1) -> Tensor:
    """Mean of ``values`` over each row's real entries, then :func:`weighted_mean` over rows.

    Parameters
    ----------
    values
        ``[B, ...]`` per-entry losses (finite everywhere: padded entries are zeroed, not skipped).
    real
        Bool of the same shape, ``False`` = not part of the row's mean, or ``None`` = every entry. Rows
        without a real entry are dropped (zero weight).
    weights
        ``[B]`` non-negative instance weights or ``None``.
    dims
        The per-row dims of ``values`` to average over.

    Examples
    --------
    >>> masked_row_mean(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[True, True], [True, False]]),
    ...                 None).item()
    3.5
    """
    if real is None:
        return weighted_mean(values.mean(dim=dims), weights)
    count = real.sum(dim=dims)
    per_row = (values * real).sum(dim=dims) / count.clamp_min(1)
    return weighted_mean(per_row, weights, count > 0)


def teacher_group_loss(scores: ScoreBatch, loss_fn: Callable[..., Tensor], loss_name: str,
                       **settings: Any) -> Tensor:
    """``loss_fn(student, teacher, mask=, weights=, **settings)`` over the batch's own ``[B, G]`` groups.

    The ``forward`` of every loss that distils a teacher over the query's candidate group: checks
    that ``scores.teacher`` exists and matches the student (:func:`check_teacher`, naming
    ``loss_name``), then applies the pure loss function with the batch's mask and weights.
    """
    teacher = check_teacher(scores.teacher, scores.student, loss_name)
    return loss_fn(scores.student, teacher, mask=scores.mask, weights=scores.weights, **settings)


def check_teacher(teacher: Tensor | None, student: Tensor, loss_name: str) -> Tensor:
    """Return ``teacher`` after checking it exists and matches ``student``'s ``[B, G]`` shape."""
    if teacher is None:
        raise ValueError(
            f"{loss_name} needs teacher scores but ScoreBatch.teacher is None; annotate the training "
            "groups with a teacher first (teacher_scores) or drop this loss"
        )
    if teacher.shape != student.shape:
        raise ValueError(
            f"{loss_name}: teacher scores have shape {tuple(teacher.shape)} but student scores have "
            f"shape {tuple(student.shape)}; both must be [B, G]"
        )
    return teacher


def check_temperature(value: float, name: str) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is a positive finite number."""
    value = float(value)
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value
