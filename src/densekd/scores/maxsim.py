"""ColBERT MaxSim: padded torch tensors for training, ragged numpy arrays for inference.

``score(q, p) = sum over real query tokens of max over real passage tokens of <q_t, p_t>``, a raw score
in ``[-Lq, Lq]`` for unit-norm tokens. The torch functions take padded ``[B, L, D]`` batches with masks
(and are differentiable); the numpy ones take a passage list stacked into ``tokens[T, D]`` with
``offsets[n + 1]`` (the token store's layout, :func:`stack_ragged`), where no padding exists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["maxsim", "maxsim_grouped", "maxsim_ragged", "stack_ragged"]


def maxsim(q_tok: Tensor, q_mask: Tensor, p_tok: Tensor, p_mask: Tensor) -> Tensor:
    """ColBERT late interaction of every query with every passage, ``[Bq, Bp]``.

    ``score(q, p) = sum over real query tokens of max over real passage tokens of <q_t, p_t>``.
    Padded passage tokens are set to ``-inf`` so they can never win the max (a zero fill would beat
    negative similarities); padded query tokens add nothing. Both get zero gradient. A passage with no
    real token scores 0. Memory is ``Bq * Bp * Lq * Lp`` floats; use :func:`maxsim_grouped` for
    training groups.

    Parameters
    ----------
    q_tok, q_mask
        ``[Bq, Lq, D]`` query token embeddings and ``[Bq, Lq]`` mask (bool or 0/1; 1 = real token).
    p_tok, p_mask
        ``[Bp, Lp, D]`` passage token embeddings and ``[Bp, Lp]`` mask.

    Examples
    --------
    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> p = torch.tensor([[[2.0, -1.0], [9.0, 9.0]]])
    >>> maxsim(q, torch.tensor([[1, 1]]), p, torch.tensor([[1, 0]])).tolist()
    [[1.0]]
    """
    sim = torch.einsum("ild,jmd->ijlm", q_tok, p_tok)  # [Bq, Bp, Lq, Lp]
    return _reduce_maxsim(sim, q_mask.bool()[:, None, :], p_mask.bool()[None, :, None, :])


def maxsim_grouped(q_tok: Tensor, q_mask: Tensor, p_tok: Tensor, p_mask: Tensor, group_size: int) -> Tensor:
    """MaxSim of each query with its own candidate group only, ``[B, G]``.

    Equal to the diagonal ``[G]`` blocks of :func:`maxsim` but with ``B * G * Lq * Lp`` memory instead
    of ``B * B * G * Lq * Lp``.

    Parameters
    ----------
    q_tok, q_mask
        ``[B, Lq, D]`` and ``[B, Lq]``.
    p_tok, p_mask
        ``[B * G, Lp, D]`` and ``[B * G, Lp]``, group-major (candidate ``j`` of query ``i`` at
        ``i * G + j``).
    group_size
        ``G``.
    """
    b, lq, d = q_tok.shape
    if p_tok.shape[0] != b * group_size or p_tok.shape[-1] != d:
        raise ValueError(
            f"passage tokens must be [B*G, Lp, D]=({b}*{group_size}, Lp, {d}), got {tuple(p_tok.shape)}"
        )
    p_tok = p_tok.reshape(b, group_size, p_tok.shape[1], d)
    sim = torch.einsum("bld,bgmd->bglm", q_tok, p_tok)  # [B, G, Lq, Lp]
    p_mask = p_mask.bool().reshape(b, group_size, 1, -1)
    return _reduce_maxsim(sim, q_mask.bool()[:, None, :], p_mask)


def _reduce_maxsim(sim: Tensor, q_mask: Tensor, p_mask: Tensor) -> Tensor:
    """``sim[X, Y, Lq, Lp]`` -> ``[X, Y]`` with masks broadcastable to ``[X, Y, Lq]`` / ``[X, Y, 1, Lp]``."""
    best = sim.masked_fill(~p_mask, float("-inf")).amax(dim=-1)  # [X, Y, Lq]
    # `where`, not a multiply: an all-padded passage leaves -inf here and -inf * 0 is NaN.
    real = q_mask & p_mask.any(dim=-1)
    return torch.where(real, best, torch.zeros_like(best)).sum(dim=-1)


def maxsim_ragged(q: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Exact MaxSim of one query against ragged passages, ``np.float32[n]``.

    Parameters
    ----------
    q
        ``[Lq, D]`` query token embeddings (real tokens only).
    tokens
        ``[T, D]`` token embeddings of ``n`` passages stacked (any float dtype; computed in float32).
    offsets
        ``[n + 1]`` int: passage ``i`` owns rows ``offsets[i]:offsets[i + 1]``; every passage needs at
        least one token (a stored passage always keeps ``[CLS]`` and ``[SEP]``).

    Examples
    --------
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> toks = np.array([[2.0, -1.0], [0.5, 0.5], [0.0, 3.0]], dtype=np.float32)
    >>> maxsim_ragged(q, toks, np.array([0, 2, 3])).tolist()
    [2.5, 3.0]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) < 2:
        return np.zeros(0, dtype=np.float32)
    if np.any(np.diff(offsets) < 1):
        raise ValueError("every passage needs at least one token")
    sim = np.asarray(tokens, dtype=np.float32) @ np.asarray(q, dtype=np.float32).T   # [T, Lq]
    # reduceat takes the max over each passage's row block in one vectorised pass
    best = np.maximum.reduceat(sim, offsets[:-1], axis=0)                              # [n, Lq]
    return best.sum(axis=1).astype(np.float32)


def stack_ragged(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens[T, D], offsets[n + 1])`` for a list of ``[n_i, D]`` arrays."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    return np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32), offsets
