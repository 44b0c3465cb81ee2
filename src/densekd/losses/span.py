"""Pointer (span) loss of an extractive reader: answer occurrences under one softmax over all passages.

A question's ``k`` passages are read separately, but their token logits are normalised **together**
(shared normalisation, Clark & Gardner 2018): one softmax over every passage token that may hold an
answer. The reader's passage distribution is then the probability mass its tokens receive, the
extractive analogue of FiD's cross-attention mass; a reader can only lower the loss by putting that
mass on answer occurrences, never by memorising an answer in a vocabulary (it has none).

Data contract
-------------
* ``start_logits`` / ``end_logits``: ``float[B, N]`` raw logits, ``N = k * L`` (passage-major).
* ``token_mask``: ``bool[B, N]``, True = a token the pointer may choose (passage text of a real
  passage; the question, title, special and padding tokens are False, so they get no mass).
* ``start_targets`` / ``end_targets``: ``bool[B, N]``, True = first / last token of an answer
  occurrence (distant supervision: every occurrence of every gold answer string). Targets outside
  ``token_mask`` are ignored.
* Questions with no target anywhere (no passage holds an answer) contribute nothing: the mean runs
  over the questions that have one; a batch without any returns a zero that still has a graph.
* ``mode="marginal"``: ``-log sum_{targets} p`` (marginal likelihood over occurrences);
  ``mode="hard_em"``: ``-log max_{targets} p`` (Min et al. 2019), for after a marginal warm-up.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPAN_MODES = ("marginal", "hard_em")


def pointer_nll(logits: Tensor, targets: Tensor, token_mask: Tensor, mode: str) -> Tensor:
    """Per row ``-log p(targets)`` under one softmax over ``token_mask``; ``float[B]`` (nan: no target).

    ``logits`` ``float[B, N]``, ``targets`` / ``token_mask`` ``bool[B, N]``; also the passage-selection
    loss of the reader (``N`` = passages, targets = passages holding an answer).
    """
    neg = torch.finfo(logits.dtype).min
    logits = logits.float()
    log_z = torch.logsumexp(logits.masked_fill(~token_mask, neg), dim=-1)
    hit = targets & token_mask
    on_targets = logits.masked_fill(~hit, neg)
    log_num = torch.logsumexp(on_targets, dim=-1) if mode == "marginal" else on_targets.max(dim=-1).values
    return torch.where(hit.any(dim=-1), log_z - log_num, torch.full_like(log_z, float("nan")))


def span_pointer_loss(start_logits: Tensor, end_logits: Tensor, start_targets: Tensor, end_targets: Tensor,
                      token_mask: Tensor, mode: str = "marginal") -> Tensor:
    """Mean over answerable questions of ``(nll_start + nll_end) / 2`` (module docstring).

    Parameters
    ----------
    start_logits, end_logits
        ``float[B, N]`` raw pointer logits.
    start_targets, end_targets
        ``bool[B, N]`` answer-occurrence boundaries.
    token_mask
        ``bool[B, N]`` tokens the pointer may choose.
    mode
        ``"marginal"`` or ``"hard_em"``.

    Returns
    -------
    Tensor
        Scalar loss (nats).

    Examples
    --------
    >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[True, True, True, False]])
    >>> t = torch.tensor([[True, False, False, False]])
    >>> round(float(span_pointer_loss(logits, logits, t, t, mask)), 4)   # log 3: one of 3 choosable
    1.0986
    """
    if mode not in SPAN_MODES:
        raise ValueError(f"mode must be one of {SPAN_MODES}, got {mode!r}")
    shapes = {t.shape for t in (start_logits, end_logits, start_targets, end_targets, token_mask)}
    if len(shapes) != 1 or start_logits.dim() != 2:
        raise ValueError(f"span_pointer_loss needs equal [B, N] shapes, got {sorted(map(tuple, shapes))}")
    token_mask = token_mask.bool()
    nll = (pointer_nll(start_logits, start_targets.bool(), token_mask, mode)
           + pointer_nll(end_logits, end_targets.bool(), token_mask, mode)) / 2
    answerable = ~torch.isnan(nll)
    if not answerable.any():
        return start_logits.sum() * 0.0 + end_logits.sum() * 0.0
    return nll[answerable].mean()
