"""Listwise KL distillation: match the student's softmax over a group to the teacher's.

Units: ``student`` and ``teacher`` are raw scores (logits) over the same ``[B, G]`` candidates; the
teacher's become probabilities only here, via ``softmax(teacher / teacher_temperature)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from densekd.losses._common import (
    check_teacher,
    check_temperature,
    soft_cross_entropy_terms,
    weighted_mean,
)
from densekd.losses.scores import ScoreBatch


def kl_distillation_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    scale_by_t2: bool = True,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    detach_teacher: bool = True,
) -> Tensor:
    """``KL(softmax(teacher / Tt) || softmax(student / Ts))`` with ``batchmean`` reduction.

    Same value as ``nn.KLDivLoss(reduction="batchmean")(log_q, p)``: summed over candidates, averaged
    over instances (a weighted average when ``weights`` is given). Not the element mean (FiD's
    ``KLDivLoss()`` default), which would also divide by ``G``.

    Parameters
    ----------
    student, teacher
        ``[B, G]`` raw scores. The teacher is detached unless ``detach_teacher=False``.
    student_temperature, teacher_temperature
        ``Ts`` and ``Tt``.
    scale_by_t2
        Multiply by ``Ts ** 2``. The gradient w.r.t. the student logits is ``(q - p) / Ts``, and with
        a shared, large temperature ``q - p`` itself shrinks like ``1 / T``, so gradients fall as
        ``1 / T ** 2`` (Hinton et al., 2015); the factor keeps the loss scale comparable across
        temperatures and against other terms (as sentence-transformers' ``DistillKLDivLoss``). The
        *student* temperature is used because the gradient flows through it; with ``Tt != Ts`` no
        single factor is exact, so pick the one that tracks the trained side.
    mask
        ``[B, G]`` bool, ``False`` = padded; padded candidates are removed from both distributions
        (logit ``-inf``). Rows with no real candidate are dropped.
    weights
        ``[B]`` non-negative instance weights or ``None``.
    detach_teacher
        ``False`` lets the gradient reach the teacher scores too (a teacher trained in the same step,
        e.g. :class:`~densekd.losses.ernie.ErnieSearchLoss`'s ColBERT -> dense term); offline
        teacher logits carry no graph either way.

    Returns
    -------
    Tensor
        Scalar loss, ``>= 0``.

    Examples
    --------
    >>> import torch
    >>> kl_distillation_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])).item()
    0.0
    """
    p, log_p, log_q = soft_cross_entropy_terms(
        student, teacher, mask, student_temperature, teacher_temperature, detach_teacher
    )
    per_row = (p * (log_p - log_q)).sum(dim=-1)
    valid = None if mask is None else mask.any(dim=-1)
    loss = weighted_mean(per_row, weights, valid)
    return loss * student_temperature**2 if scale_by_t2 else loss


class KLDistillation(nn.Module):
    """Listwise KL from teacher to student; component ``"kl"``. Needs ``ScoreBatch.teacher``.

    Parameters
    ----------
    student_temperature
        ``Ts``, divides the student scores.
    teacher_temperature
        ``Tt``, divides the teacher logits; larger = flatter target.
    scale_by_t2
        Multiply the loss by ``Ts ** 2`` (see :func:`kl_distillation_loss`).
    """

    def __init__(
        self, student_temperature: float = 1.0, teacher_temperature: float = 1.0, scale_by_t2: bool = True
    ) -> None:
        super().__init__()
        self.student_temperature = check_temperature(student_temperature, "student_temperature")
        self.teacher_temperature = check_temperature(teacher_temperature, "teacher_temperature")
        self.scale_by_t2 = bool(scale_by_t2)

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"kl": scalar}``."""
        teacher = check_teacher(scores.teacher, scores.student, "KLDistillation")
        loss = kl_distillation_loss(
            scores.student,
            teacher,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
            scale_by_t2=self.scale_by_t2,
            mask=scores.mask,
            weights=scores.weights,
        )
        return {"kl": loss}

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, scale_by_t2={self.scale_by_t2}"
        )
