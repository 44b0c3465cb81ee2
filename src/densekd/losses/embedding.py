"""Embedding-level self-distillation: a changed encoder reproduces a reference encoder's vectors.

Used by quantisation-aware distillation (:mod:`densekd.training.qad`): the student is the encoder
under simulated int8, the teacher the same weights in fp32. Inputs are embeddings, not scores:
``student[B, D]`` and ``teacher[B, D]`` for the same ``B`` texts, row ``i`` of each from text ``i``.

Two named components:

* ``"cosine"``: mean of ``1 - cos(student_i, teacher_i)``; pulls each vector back to its reference
  (what an index built from the fp32 vectors needs);
* ``"in_batch_kl"``: ``KL(softmax(teacher_i . teacher_j / T) || softmax(student_i . teacher_j / T))``
  over the batch; keeps the *ranking* the vectors induce (what retrieval needs), which a small
  per-vector cosine error can still scramble between near neighbours.
"""

from __future__ import annotations

from torch import Tensor, nn

from densekd.losses.kl import kl_distillation_loss


def embedding_distillation_loss(student: Tensor, teacher: Tensor, *, temperature: float = 0.05,
                                score_weight: float = 1.0) -> dict[str, Tensor]:
    """Cosine and in-batch score-distribution distillation of ``student`` towards ``teacher``.

    Parameters
    ----------
    student, teacher
        ``[B, D]`` embeddings of the same texts; the teacher is detached.
    temperature
        Softmax temperature of the in-batch scores (both sides).
    score_weight
        Weight of ``"in_batch_kl"`` in ``"loss"`` (0 turns it off; with ``B == 1`` it is 0 anyway).

    Returns
    -------
    dict[str, Tensor]
        Scalars ``"cosine"``, ``"in_batch_kl"`` and their weighted sum ``"loss"``.

    Examples
    --------
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> abs(embedding_distillation_loss(x, x)["loss"].item()) < 1e-6
    True
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"embedding distillation needs two [B, D] tensors of one shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    teacher = teacher.detach()
    cosine = (1 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    kl = kl_distillation_loss(student @ teacher.T, teacher @ teacher.T, student_temperature=temperature,
                              teacher_temperature=temperature, scale_by_t2=False)
    return {"cosine": cosine, "in_batch_kl": kl, "loss": cosine + score_weight * kl}
