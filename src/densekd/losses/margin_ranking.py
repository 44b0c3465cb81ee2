"""Max-margin ranking distillation (Izacard & Grave, 2021): hinge on teacher-ordered pairs.

Units: raw student scores (the margin is in the student's score units: about 1 for unnormalised dot
products, 0.05-0.2 for cosine students) and raw teacher scores, of which only the *order* is used, so
any teacher unit works (reader attention logits, probabilities, likelihoods).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densekd.losses._common import check_pair_shape, teacher_group_loss, teacher_ordered_pair_mean
from densekd.losses.batch import ScoreBatch


def margin_ranking_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    margin: float = 1.0,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """``max(0, margin - (s_j - s_k))`` for every pair the teacher orders ``t_j > t_k``.

    Averaged over a query's ordered pairs, then (weighted) over queries, as
    :func:`densekd.losses.listwise.ranknet_loss` (the paper sums; a mean keeps the scale independent
    of the group size). Teacher ties give no pair; queries without a pair are dropped.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores; the teacher is detached and only its order matters.
    margin
        ``gamma >= 0``, in student score units.
    mask
        ``[B, G]`` bool, ``False`` = padded (in no pair).
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss, ``0`` once every ordered pair is separated by at least ``margin``.

    Examples
    --------
    >>> s = torch.tensor([[0.0, 0.5, 3.0]])
    >>> t = torch.tensor([[3.0, 2.0, 1.0]])   # teacher order: 0 > 1 > 2
    >>> # pairs (0,1): 1 - (0 - 0.5) = 1.5; (0,2): 1 - (0 - 3) = 4; (1,2): 1 - (0.5 - 3) = 3.5
    >>> margin_ranking_loss(s, t).item()
    3.0
    """
    check_pair_shape(student, teacher, "MarginRanking")
    return teacher_ordered_pair_mean(student, teacher, lambda diff: torch.relu(margin - diff), mask, weights)


class MarginRanking(nn.Module):
    """Hinge loss on teacher-ordered pairs; component ``"margin_ranking"``. Needs a teacher.

    Parameters
    ----------
    margin
        ``gamma >= 0`` in student score units (see the module docstring).
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        margin = float(margin)
        if not (margin >= 0 and margin != float("inf")):
            raise ValueError(f"margin must be a finite number >= 0, got {margin}")
        self.margin = margin

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"margin_ranking": scalar}``."""
        return {"margin_ranking": teacher_group_loss(scores, margin_ranking_loss, "MarginRanking", margin=self.margin)}

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
