"""Pointwise binary cross-entropy over a query's candidates: the positive labelled 1, negatives 0.

The classic monoBERT / sentence-transformers recipe for training a cross-encoder re-ranker
(:class:`~densekd.training.teacher_config.TeacherConfig` ``loss="pointwise"``). Units: raw logits;
the sigmoid is applied inside (``binary_cross_entropy_with_logits``, numerically stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pointwise_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits (positive = 1, negatives = 0), mean over kept candidates.

    Parameters
    ----------
    logits
        ``float[B, G]`` raw scores, the positive in column 0.
    mask
        Optional ``bool[B, G]``; False entries (repeated ids) get no weight.

    Examples
    --------
    >>> round(float(pointwise_loss(torch.tensor([[0.0, 0.0]]))), 4)       # log 2
    0.6931
    """
    labels = torch.zeros_like(logits, dtype=torch.float32)
    labels[:, 0] = 1.0
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    if mask is None:
        return per_pair.mean()
    weights = mask.to(per_pair.dtype)
    return (per_pair * weights).sum() / weights.sum()
