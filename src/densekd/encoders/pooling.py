"""Pooling of token embeddings into one vector per text.

All functions are pure: ``hidden[B, L, H]`` float and ``attention_mask[B, L]`` (1 = real token,
0 = padding) in, ``[B, H]`` out. Padding never contributes.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("cls", "mean", "max")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token vectors, ``[B, L, H] -> [B, H]``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # clamp: an all-padding row (never produced by a tokenizer, but possible by hand) gives 0, not NaN
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's vector (``[CLS]`` for BERT-style models), ``[B, L, H] -> [B, H]``."""
    return hidden[:, 0]


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over non-padding tokens, ``[B, L, H] -> [B, H]``."""
    masked = hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min)
    return masked.max(dim=1).values


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Dispatch to a pooling function by name (``"cls"``, ``"mean"`` or ``"max"``).

    Examples
    --------
    >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> m = torch.tensor([[1, 1, 0]])
    >>> pool(h, m, "mean").tolist()
    [[2.0, 3.0]]
    >>> pool(h, m, "cls").tolist()
    [[1.0, 2.0]]
    """
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return cls_pool(hidden, attention_mask)
    if mode == "max":
        return max_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOLING_MODES}")
