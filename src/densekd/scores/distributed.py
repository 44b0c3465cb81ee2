"""DDP gathering for in-batch negatives: the only place in densekd that talks to torch.distributed for losses.

Distributed training and loss scaling
-------------------------------------
Convention: every loss is a mean over the **local** batch, and DDP averages gradients over ranks.
With in-batch negatives gathered from all ranks (:func:`global_in_batch`) this gives exactly the
gradient of the mean loss over the global batch, with no ``world_size`` factor, *because*
:func:`gather_with_grad` is differentiable across ranks:

* rank ``r``'s loss depends on its own queries and on every rank's passages;
* in the backward pass each rank's gradient w.r.t. the gathered passages is all-reduced (summed), and
  each rank keeps the slice of its own rows, so passage ``j`` receives ``sum_r dL_r / dp_j`` (pushed
  away by *every* rank's queries), and the local slice's autograd graph carries it into the encoder;
* DDP then averages the parameter gradients: ``(1 / W) sum_r dL_r / dtheta = d mean_r(L_r) / dtheta``,
  which equals the single-process gradient of the mean over all ``W * B`` queries.

The cheaper-looking alternative, a plain ``all_gather`` where only the local slice keeps its graph,
is only correct when every rank computes the loss of the *global* batch (gathering queries too) and
multiplies it by ``world_size`` (tevatron does this); with local-query losses it silently drops the
gradient that other ranks' queries put on this rank's passages. Doing the sum in the backward keeps
losses local (so weights, masks and teacher scores need no gathering) and keeps the scaling in this
one module. Requirements: every rank runs backward through each gathered tensor (the backward is a
collective), and for exact equality with the global mean every rank has the same batch size (use
``drop_last``); uneven batch sizes are supported for the scores themselves.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from densekd.scores.dense import in_batch_scores

__all__ = ["InBatchScores", "gather_with_grad", "global_in_batch", "world_size"]


def _world() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def world_size() -> int:
    """Processes in the default group (``1`` when none is initialised)."""
    return _world()[0]


def _gather_sizes(rows: int, device: torch.device, world: int) -> list[int]:
    """Row counts of every rank (one tiny collective; lets the last, smaller batch through)."""
    local = torch.tensor([rows], dtype=torch.long, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _all_gather_rows(t: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0 (no autograd)."""
    # all_gather needs identical shapes everywhere: pad to the longest rank, strip afterwards.
    wire = t.to(torch.uint8) if t.dtype == torch.bool else t  # gloo cannot all_gather bool
    longest = max(sizes)
    if wire.shape[0] < longest:
        wire = torch.cat([wire, wire.new_zeros((longest - wire.shape[0], *wire.shape[1:]))])
    parts = [torch.empty_like(wire) for _ in sizes]
    dist.all_gather(parts, wire.contiguous())
    out = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return out.bool() if t.dtype == torch.bool else out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient into the owner's rows (see module doc)."""

    @staticmethod
    def forward(ctx, t: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_rows(t, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd may reuse the buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def _gather(t: Tensor) -> tuple[Tensor, int, list[int]]:
    """``(gathered, rows on earlier ranks, per-rank sizes)``; identity on one process."""
    world, rank = _world()
    if world == 1:
        return t, 0, [t.shape[0]]
    sizes = _gather_sizes(t.shape[0], t.device, world)
    if t.requires_grad and torch.is_grad_enabled():
        gathered = _GatherWithGrad.apply(t, sizes, rank)
    else:
        gathered = _all_gather_rows(t, sizes)
    return gathered, sum(sizes[:rank]), sizes


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, differentiably.

    The local rank's rows keep their autograd graph, and gradients that other ranks compute for this
    rank's rows are summed back into it during backward (an ``all_reduce``), which is what makes
    local-mean losses over gathered negatives exact under DDP (module docstring). Identity when
    ``torch.distributed`` is not initialised or has one rank. Ranks may hold different row counts;
    all other dims must match. Every rank must call it (and backpropagate through it) in lockstep.

    Parameters
    ----------
    t
        ``[n_local, ...]`` tensor on this rank.

    Returns
    -------
    Tensor
        ``[sum of n_local over ranks, ...]``, rank 0's rows first.
    """
    return _gather(t)[0]


class InBatchScores(NamedTuple):
    """Result of :func:`global_in_batch`.

    Attributes
    ----------
    scores
        ``[B_local, N_global]`` raw scores of the local queries against every rank's passages.
    offset
        Columns that belong to earlier ranks; pass it as ``ScoreBatch.in_batch_offset``.
    mask
        ``[N_global]`` gathered passage mask, or ``None`` when no ``p_mask`` was given; pass it as
        ``ScoreBatch.in_batch_mask``.
    """

    scores: Tensor
    offset: int
    mask: Tensor | None


def global_in_batch(q: Tensor, p: Tensor, p_mask: Tensor | None = None) -> InBatchScores:
    """Score the local queries against the passages of the whole (global) batch.

    Only the passages are gathered. The queries stay local on purpose: the loss is a mean over the
    local queries and DDP averages over ranks (module docstring), so gathering queries would only
    recompute other ranks' rows, ``W`` times over, and then need a ``world_size`` rescale.

    Parameters
    ----------
    q
        ``[B, H]`` local query embeddings.
    p
        ``[B * G, H]`` local passage embeddings, group-major.
    p_mask
        Optional ``[B, G]`` or ``[B * G]`` bool mask of real (not padded) passages.

    Returns
    -------
    InBatchScores
        ``(scores[B, N], offset, mask[N] | None)``; on one process ``N = B * G`` and ``offset = 0``.

    Examples
    --------
    >>> res = global_in_batch(torch.eye(2), torch.eye(2).repeat(2, 1))
    >>> res.scores.shape, res.offset
    (torch.Size([2, 4]), 0)
    """
    if p_mask is not None:
        p_mask = p_mask.reshape(-1).bool()
        if p_mask.shape[0] != p.shape[0]:
            raise ValueError(f"p_mask has {p_mask.shape[0]} entries for {p.shape[0]} passages")
    p_all, offset, sizes = _gather(p)
    mask_all = None
    if p_mask is not None:
        mask_all = p_mask if len(sizes) == 1 else _all_gather_rows(p_mask, sizes)
    return InBatchScores(in_batch_scores(q, p_all), offset, mask_all)
