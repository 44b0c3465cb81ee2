"""Learning-to-rank distillation losses: ListNet (listwise) and RankNet (pairwise).

Units: raw student and teacher scores (logits) over the same ``[B, G]`` candidates. ListNet turns the
teacher's into a target distribution with a softmax; RankNet only uses the teacher's *order*.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from densekd.losses._common import (
    check_pair_shape,
    check_temperature,
    soft_cross_entropy_terms,
    teacher_group_loss,
    teacher_ordered_pair_mean,
    weighted_mean,
)
from densekd.losses.batch import ScoreBatch


def listnet_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """ListNet top-one cross-entropy ``-sum_j softmax(t / Tt)_j * log_softmax(s / Ts)_j``.

    Equals the KL loss plus the teacher's entropy (a constant for the student), so the gradients
    match :func:`densekd.losses.kl.kl_distillation_loss` without ``T**2`` scaling, but the value does
    not reach 0.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores; the teacher is detached.
    student_temperature, teacher_temperature
        ``Ts`` and ``Tt``.
    mask
        ``[B, G]`` bool, ``False`` = padded (excluded from both softmaxes). Rows with no real candidate
        are dropped.
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> import math, torch
    >>> loss = listnet_loss(torch.zeros(1, 2), torch.tensor([[5.0, -5.0]]))
    >>> round(loss.item(), 6) == round(math.log(2), 6)
    True
    """
    p, _, log_q = soft_cross_entropy_terms(student, teacher, mask, student_temperature, teacher_temperature)
    per_row = -(p * log_q).sum(dim=-1)
    return weighted_mean(per_row, weights, None if mask is None else mask.any(dim=-1))


def ranknet_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    sigma: float = 1.0,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """RankNet: ``log(1 + exp(-sigma * (s_j - s_k)))`` for every pair the teacher orders ``t_j > t_k``.

    Averaged over a query's ordered pairs, then (weighted) over queries. Teacher ties give no pair;
    queries without any pair (one real candidate, or all teacher scores tied) are dropped.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores; the teacher is detached and only its order matters.
    sigma
        Steepness of the pairwise logistic.
    mask
        ``[B, G]`` bool, ``False`` = padded (in no pair).
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> import math, torch
    >>> loss = ranknet_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 1.0]]))
    >>> round(loss.item(), 6) == round(math.log(1 + math.exp(1)), 6)
    True
    """
    check_pair_shape(student, teacher, "RankNet")
    # softplus(-x) = log(1 + exp(-x)), computed without overflow
    return teacher_ordered_pair_mean(student, teacher, lambda diff: F.softplus(-sigma * diff), mask, weights)


class ListNet(nn.Module):
    """ListNet cross-entropy to the teacher's softmax; component ``"listnet"``. Needs a teacher.

    Parameters
    ----------
    student_temperature, teacher_temperature
        Divide the student scores / teacher logits before their softmax.
    """

    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0) -> None:
        super().__init__()
        self.student_temperature = check_temperature(student_temperature, "student_temperature")
        self.teacher_temperature = check_temperature(teacher_temperature, "teacher_temperature")

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"listnet": scalar}``."""
        loss = teacher_group_loss(scores, listnet_loss, "ListNet", student_temperature=self.student_temperature,
                                  teacher_temperature=self.teacher_temperature)
        return {"listnet": loss}

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}"
        )


class RankNet(nn.Module):
    """Pairwise logistic loss on teacher-ordered pairs; component ``"ranknet"``. Needs a teacher.

    Parameters
    ----------
    sigma
        Steepness of the pairwise logistic, ``log(1 + exp(-sigma * (s_j - s_k)))``.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = check_temperature(sigma, "sigma")

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"ranknet": scalar}``."""
        return {"ranknet": teacher_group_loss(scores, ranknet_loss, "RankNet", sigma=self.sigma)}

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
