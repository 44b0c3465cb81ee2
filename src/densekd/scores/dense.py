"""Dot-product scores of dense embeddings: each query against its own candidate group, or against all.

Layout: ``B`` queries, each with a group of ``G`` candidates (candidate 0 is the positive). Passage
embeddings are flattened group-major: candidate ``j`` of query ``i`` is row ``i * G + j`` of
``p[B * G, H]``. Scores are raw (logits before any temperature or softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_scores", "in_batch_scores"]


def group_scores(q: Tensor, p: Tensor, group_size: int) -> Tensor:
    """Dot product of each query with its own candidate group, ``[B, H] x [B*G, H] -> [B, G]``.

    Examples
    --------
    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> p = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    >>> group_scores(q, p, 2).tolist()
    [[1.0, 3.0], [6.0, 8.0]]
    """
    b, h = q.shape
    if p.shape != (b * group_size, h):
        raise ValueError(
            f"passages must be [B*G, H]=({b}*{group_size}, {h}) for queries {tuple(q.shape)}, "
            f"got {tuple(p.shape)}"
        )
    return torch.einsum("bh,bgh->bg", q, p.reshape(b, group_size, h))


def in_batch_scores(q: Tensor, p: Tensor) -> Tensor:
    """Every query against every passage, ``[B, H] x [N, H] -> [B, N]``."""
    if q.shape[-1] != p.shape[-1]:
        raise ValueError(f"embedding sizes differ: queries {tuple(q.shape)}, passages {tuple(p.shape)}")
    return q @ p.T
