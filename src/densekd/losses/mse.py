"""Pointwise MSE between raw student and raw teacher scores.

Units: raw scores (logits) on both sides, compared as they are: the student must reproduce the
teacher's absolute scale, which suits teachers and students that share a score range (e.g. a
bi-encoder teacher). For cross-encoder logits prefer margins (:mod:`densekd.losses.margin_mse`) or
distributions (:mod:`densekd.losses.kl`).
"""

from __future__ import annotations

from torch import Tensor, nn

from densekd.losses._common import check_pair_shape, float_scores, masked_row_mean, teacher_group_loss
from densekd.losses.batch import ScoreBatch


def score_mse_loss(
    student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, weights: Tensor | None = None
) -> Tensor:
    """``(student - teacher) ** 2`` averaged over a query's real candidates, then over queries.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores; the teacher is detached.
    mask
        ``[B, G]`` bool, ``False`` = padded (skipped). Rows with no real candidate are dropped.
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> score_mse_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item()
    2.5
    """
    check_pair_shape(student, teacher, "ScoreMSE")
    s, t = float_scores(student, teacher, mask)  # no inf from padded slots
    return masked_row_mean((s - t) ** 2, mask, weights)


class ScoreMSE(nn.Module):
    """MSE on raw scores; component ``"mse"``. Needs ``ScoreBatch.teacher``; no arguments."""

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"mse": scalar}``."""
        return {"mse": teacher_group_loss(scores, score_mse_loss, "ScoreMSE")}
