"""Student scores for the densekd losses, and the single place where DDP gathering happens.

Units
-----
Every tensor here holds **raw scores**: dot products of embeddings or ColBERT MaxSim sums, i.e. logits
before any temperature or softmax. :class:`ScoreBatch.teacher` holds raw teacher logits (the
``TrainGroup.teacher_scores`` column), never probabilities; each loss applies its own temperature and
softmax.

Layout
------
``B`` queries, each with a group of ``G`` candidates; candidate 0 is the positive. Passage embeddings
are flattened group-major: candidate ``j`` of query ``i`` is row ``i * G + j`` of ``p[B * G, H]``, so in
the in-batch matrix ``in_batch[B, N]`` query ``i``'s positive sits at column ``offset + i * G``
(``offset = 0`` on a single process).

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

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class ScoreBatch:
    """Everything a loss needs for one batch: student, in-batch and teacher scores (raw logits).

    Attributes
    ----------
    student
        ``[B, G]`` student scores of each query's candidate group; column 0 is the positive.
    in_batch
        ``[B, N]`` each local query against every passage of the (possibly gathered) batch, or
        ``None``. ``N = B * G`` on one process; query ``i``'s positive is column
        ``in_batch_offset + i * G``.
    teacher
        ``[B, G]`` raw teacher logits/scores for the same candidates, or ``None``.
    weights
        ``[B]`` non-negative per-instance weights (e.g. self-paced selection), or ``None`` = uniform.
        Every loss becomes ``sum(w * loss_i) / sum(w)`` over the local batch.
    mask
        ``[B, G]`` bool, ``False`` = padded candidate, excluded from every loss. Integer masks are
        converted. The positive (column 0) must be real; a row whose positive is padded is dropped by
        the losses that need it.
    in_batch_mask
        ``[N]`` bool column mask for ``in_batch``. When ``None`` and ``mask`` is set, it defaults to
        ``mask.reshape(-1)``, which is only possible when ``in_batch`` covers the local passages alone;
        gathered batches must pass the gathered mask (:func:`global_in_batch` returns it).
    in_batch_offset
        Number of ``in_batch`` columns that belong to earlier ranks (``0`` on one process).
    heads
        Extra score heads of a multi-head student over the *same* ``[B, G]`` candidates, by name
        (e.g. ``{"colbert": ScoreBatch(...)}`` from an ERNIE-Search model, whose dense head is this
        batch itself), or ``None``. Single-head losses ignore them; a loss that needs one reads it
        with :meth:`head`.

    Examples
    --------
    >>> s = ScoreBatch(student=torch.zeros(2, 3), in_batch=torch.zeros(2, 6))
    >>> s.batch_size, s.group_size, s.positive_columns().tolist()
    (2, 3, [0, 3])
    """

    student: Tensor
    in_batch: Tensor | None = None
    teacher: Tensor | None = None
    weights: Tensor | None = None
    mask: Tensor | None = None
    in_batch_mask: Tensor | None = None
    in_batch_offset: int = 0
    heads: dict[str, ScoreBatch] | None = None

    def __post_init__(self) -> None:
        if self.student.ndim != 2:
            raise ValueError(f"student scores must be [B, G], got shape {tuple(self.student.shape)}")
        b, g = self.student.shape
        if self.teacher is not None and self.teacher.shape != self.student.shape:
            raise ValueError(
                f"teacher scores {tuple(self.teacher.shape)} do not match student scores {(b, g)}"
            )
        if self.weights is not None:
            if self.weights.shape != (b,):
                raise ValueError(f"weights must be [B]={b}, got shape {tuple(self.weights.shape)}")
            # one host sync per batch; a negative weight would make the normalised mean meaningless
            if bool((self.weights < 0).any()):
                raise ValueError("weights must be non-negative")
        if self.mask is not None:
            if self.mask.shape != self.student.shape:
                raise ValueError(f"mask {tuple(self.mask.shape)} does not match student scores {(b, g)}")
            self.mask = self.mask.bool()
        if self.in_batch is not None:
            self._check_in_batch(b, g)
        for name, head in (self.heads or {}).items():
            if head.student.shape != self.student.shape:
                raise ValueError(f"score head {name!r} has shape {tuple(head.student.shape)}, the primary "
                                 f"scores {(b, g)}: every head must score the same candidates")

    def _check_in_batch(self, b: int, g: int) -> None:
        assert self.in_batch is not None
        if self.in_batch.ndim != 2 or self.in_batch.shape[0] != b:
            raise ValueError(f"in_batch must be [B={b}, N], got shape {tuple(self.in_batch.shape)}")
        n = self.in_batch.shape[1]
        last_positive = self.in_batch_offset + (b - 1) * g
        if self.in_batch_offset < 0 or (b > 0 and last_positive >= n):
            raise ValueError(
                f"in_batch has {n} columns but in_batch_offset={self.in_batch_offset} with B={b}, G={g} "
                f"puts the last positive at column {last_positive}"
            )
        if self.in_batch_mask is not None:
            if self.in_batch_mask.shape != (n,):
                raise ValueError(
                    f"in_batch_mask must be [N]={n}, got shape {tuple(self.in_batch_mask.shape)}"
                )
            self.in_batch_mask = self.in_batch_mask.bool()
        elif self.mask is not None:
            if n != b * g or self.in_batch_offset != 0:
                raise ValueError(
                    f"in_batch has {n} columns (gathered?) but only the local [B, G]={b, g} mask was "
                    "given; pass in_batch_mask for all columns (global_in_batch returns it)"
                )
            self.in_batch_mask = self.mask.reshape(-1)

    @property
    def batch_size(self) -> int:
        """``B``, the number of local queries."""
        return self.student.shape[0]

    @property
    def group_size(self) -> int:
        """``G``, candidates per query (positive included)."""
        return self.student.shape[1]

    def head(self, name: str) -> ScoreBatch:
        """The extra score head ``name``; ``ValueError`` naming the available heads when it is absent."""
        if not self.heads or name not in self.heads:
            raise ValueError(f"no score head {name!r} in this batch (heads: {sorted(self.heads or {})}); "
                             "train a student whose compute_scores provides it (encoders.ernie.ErnieSearchModel)")
        return self.heads[name]

    def positive_columns(self) -> Tensor:
        """``[B]`` long: the ``in_batch`` column of each query's positive."""
        rows = torch.arange(self.batch_size, device=self.student.device)
        return self.in_batch_offset + rows * self.group_size


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


# ----------------------------------------------------------------------------------------------
# Distributed gathering: the only place in densekd that talks to torch.distributed for losses.
# ----------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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
