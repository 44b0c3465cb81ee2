"""MarginMSE (Hofstätter et al., 2020): regress the student's score margins onto the teacher's.

Units: raw scores (logits) on both sides, no softmax. Only *differences* of scores enter, so the loss
is invariant to adding a per-query constant to either side, but not to rescaling: a teacher whose
logits span [-10, 10] asks a cosine student (scores in [-1, 1]) for impossible margins: divide the
student's scores by ``student_temperature`` (as the KL's student side does; 0.05 turns cosine margins of
up to 2 into margins of up to 40), or use :mod:`densekd.losses.kl` instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from densekd.losses._common import (
    check_pair_shape,
    check_temperature,
    float_scores,
    masked_row_mean,
    teacher_group_loss,
)
from densekd.losses.batch import ScoreBatch


def margin_mse_loss(
    student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, weights: Tensor | None = None,
    student_temperature: float = 1.0,
) -> Tensor:
    """Mean squared error between ``(s_pos - s_neg_j) / T`` and ``t_pos - t_neg_j`` over every negative ``j``.

    Averaged over a query's real negatives, then (weighted) over queries, so a query counts once
    however many negatives it has.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores, column 0 the positive, ``G >= 2``. The teacher is detached.
    mask
        ``[B, G]`` bool, ``False`` = padded. Padded negatives are skipped; queries with a padded
        positive or no real negative are dropped.
    weights
        ``[B]`` non-negative instance weights or ``None``.
    student_temperature
        ``T > 0``: the student's scores are divided by it, so a cosine student can match a teacher's
        logit-scale margins (1.0 = raw scores).

    Returns
    -------
    Tensor
        Scalar loss.

    Raises
    ------
    ValueError
        On mismatched shapes or ``G < 2`` (no margin to compute).

    Examples
    --------
    >>> import torch
    >>> margin_mse_loss(torch.tensor([[3.0, 1.0]]), torch.tensor([[5.0, 2.0]])).item()
    1.0
    """
    check_pair_shape(student, teacher, "MarginMSE")
    if student.shape[1] < 2:
        raise ValueError(f"MarginMSE needs a positive and >= 1 negative per query, got G={student.shape[1]}")
    # padded slots may hold anything (even -inf); they are overwritten so no inf/NaN reaches the gradient
    s, t = float_scores(student, teacher, mask)
    s = s / check_temperature(student_temperature, "student_temperature")
    sq = ((s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])) ** 2  # [B, G-1]
    return masked_row_mean(sq, None if mask is None else mask[:, 1:] & mask[:, :1], weights)


class MarginMSE(nn.Module):
    """MarginMSE over every (positive, negative) pair of a group; component ``"margin_mse"``.

    Needs ``ScoreBatch.teacher``.

    Parameters
    ----------
    student_temperature
        Divides the student's scores before the margins are taken (see :func:`margin_mse_loss`).
    """

    def __init__(self, student_temperature: float = 1.0) -> None:
        super().__init__()
        self.student_temperature = check_temperature(student_temperature, "student_temperature")

    def extra_repr(self) -> str:
        return f"student_temperature={self.student_temperature}"

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"margin_mse": scalar}``."""
        return {"margin_mse": teacher_group_loss(scores, margin_mse_loss, "MarginMSE",
                                                 student_temperature=self.student_temperature)}
