"""Listwise KL distillation: match the student's softmax over a group to the teacher's.

Units: ``student`` and ``teacher`` are raw scores (logits) over the same ``[B, G]`` candidates; the
teacher's become probabilities only here, via ``softmax(teacher / teacher_temperature)``.

In-batch variant (``use_in_batch``): the student's softmax runs over *every* passage of the batch
(``ScoreBatch.in_batch[B, N]``), the teacher's over the query's own group, and the teacher puts
probability 0 on the other queries' passages. The group-only KL is blind to the scores of passages
outside the group, so a query tower can satisfy it while mapping every question to nearly the same
vector (seen in the reader -> retriever loop, where each group is the question's own retrieved top k);
the in-batch form adds ``log sum_all exp(s / Ts) - log sum_group exp(s / Ts)``, which such a collapse
makes large. Another query's copy of a shared passage counts as a negative there, as in DPR's
in-batch negatives, unless it is one of the query's labelled positives (``ScoreBatch.in_batch_exclude``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densekd.losses._common import (
    check_teacher,
    check_temperature,
    masked_log_softmax,
    soft_cross_entropy_terms,
    teacher_distribution,
    teacher_group_loss,
    weighted_mean,
)
from densekd.losses.batch import ScoreBatch


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
    return _batchmean_kl(p, log_p, log_q, mask, weights, student_temperature**2 if scale_by_t2 else 1.0)


def _batchmean_kl(p: Tensor, log_p: Tensor, log_q: Tensor, mask: Tensor | None, weights: Tensor | None,
                  factor: float) -> Tensor:
    """``factor * weighted mean over rows of sum_j p (log p - log q)``; all-padded rows dropped.

    ``p``, ``log_p``, ``log_q`` are ``[B, G]`` and already 0 at padded candidates.
    """
    per_row = (p * (log_p - log_q)).sum(dim=-1)
    valid = None if mask is None else mask.any(dim=-1)
    return weighted_mean(per_row, weights, valid) * factor


def kl_in_batch_loss(
    in_batch: Tensor,
    teacher: Tensor,
    own_columns: Tensor,
    *,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    scale_by_t2: bool = True,
    mask: Tensor | None = None,
    in_batch_mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """KL from the teacher's group distribution to the student's softmax over the whole batch.

    ``sum_j p_ij (log p_ij - log q_i[own_columns_ij])`` with ``p = softmax(teacher / Tt)`` over the
    group and ``q = softmax(in_batch / Ts)`` over all ``N`` columns; batchmean, as
    :func:`kl_distillation_loss`, which it equals when ``N = G`` (one query, no other passages).

    Parameters
    ----------
    in_batch
        ``[B, N]`` raw student scores of each query against every passage of the batch.
    teacher
        ``[B, G]`` raw teacher logits of each query's own group (detached).
    own_columns
        ``[B, G]`` long, the ``in_batch`` column of each group candidate.
    mask
        ``[B, G]`` bool, ``False`` = padded candidate.
    in_batch_mask
        ``[N]`` (or per query ``[B, N]``) bool, ``False`` = a column outside the softmax (padded, or a
        copy of the query's positive in another group: ``ScoreBatch.in_batch_negatives``).
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss, ``>= 0``.
    """
    log_q_all = masked_log_softmax(in_batch.float() / student_temperature, in_batch_mask)
    log_q = log_q_all.gather(1, own_columns)
    p, log_p = teacher_distribution(teacher, mask, teacher_temperature)
    if mask is not None:
        log_q = log_q.masked_fill(~mask, 0.0)
    return _batchmean_kl(p, log_p, log_q, mask, weights, student_temperature**2 if scale_by_t2 else 1.0)


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
    use_in_batch
        Student softmax over every passage of the batch (:func:`kl_in_batch_loss`) when
        ``ScoreBatch.in_batch`` is present; default ``False``: over the group only (the paper's form).
    """

    def __init__(
        self, student_temperature: float = 1.0, teacher_temperature: float = 1.0, scale_by_t2: bool = True,
        use_in_batch: bool = False,
    ) -> None:
        super().__init__()
        self.student_temperature = check_temperature(student_temperature, "student_temperature")
        self.teacher_temperature = check_temperature(teacher_temperature, "teacher_temperature")
        self.scale_by_t2 = bool(scale_by_t2)
        self.use_in_batch = bool(use_in_batch)

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"kl": scalar}``."""
        settings = {"student_temperature": self.student_temperature,
                    "teacher_temperature": self.teacher_temperature, "scale_by_t2": self.scale_by_t2}
        if self.use_in_batch and scores.in_batch is not None:
            teacher = check_teacher(scores.teacher, scores.student, "KLDistillation")
            offsets = torch.arange(scores.group_size, device=teacher.device)
            own = scores.positive_columns()[:, None] + offsets[None, :]
            loss = kl_in_batch_loss(scores.in_batch, teacher, own, mask=scores.mask,
                                    in_batch_mask=scores.in_batch_negatives(), weights=scores.weights, **settings)
            return {"kl": loss}
        return {"kl": teacher_group_loss(scores, kl_distillation_loss, "KLDistillation", **settings)}

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, scale_by_t2={self.scale_by_t2}, "
            f"use_in_batch={self.use_in_batch}"
        )
