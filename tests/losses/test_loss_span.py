"""Properties of the shared-normalised pointer loss of the extractive reader."""

from __future__ import annotations

import math

import pytest
import torch

from densekd.losses.span import span_pointer_loss


def _case(seed: int = 0, B: int = 3, N: int = 12):
    g = torch.Generator().manual_seed(seed)
    start, end = torch.randn(B, N, generator=g), torch.randn(B, N, generator=g)
    mask = torch.rand(B, N, generator=g) > 0.2
    targets = torch.zeros(B, N, dtype=torch.bool)
    targets[:, 2] = targets[:, 7] = True
    mask[:, 2] = mask[:, 7] = True
    return start, end, targets, mask


def test_uniform_logits_cost_log_of_choosable_tokens_over_targets():
    logits = torch.zeros(1, 6)
    mask = torch.tensor([[True, True, True, True, False, False]])
    t = torch.tensor([[True, True, False, False, False, False]])
    assert float(span_pointer_loss(logits, logits, t, t, mask)) == pytest.approx(math.log(4 / 2))
    assert float(span_pointer_loss(logits, logits, t, t, mask, "hard_em")) == pytest.approx(math.log(4))


def test_tokens_outside_the_mask_get_no_mass():
    start, end, t, mask = _case()
    changed = start.masked_fill(~mask, 50.0)   # huge logits where the pointer may not point
    assert torch.allclose(span_pointer_loss(start, end, t, t, mask), span_pointer_loss(changed, end, t, t, mask))


def test_marginal_never_exceeds_hard_em_and_both_are_nonnegative():
    for seed in range(5):
        start, end, t, mask = _case(seed)
        marginal = span_pointer_loss(start, end, t, t, mask)
        hard = span_pointer_loss(start, end, t, t, mask, "hard_em")
        assert 0 <= float(marginal) <= float(hard) + 1e-6


def test_questions_without_an_answer_occurrence_are_left_out_of_the_mean():
    start, end, t, mask = _case()
    t_none = t.clone()
    t_none[1] = False
    keep = torch.tensor([0, 2])
    expected = span_pointer_loss(start[keep], end[keep], t[keep], t[keep], mask[keep])
    assert torch.allclose(span_pointer_loss(start, end, t_none, t_none, mask), expected)
    empty = torch.zeros_like(t)
    s = start.clone().requires_grad_(True)
    loss = span_pointer_loss(s, end, empty, empty, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


def test_loss_falls_as_mass_moves_to_the_answer_and_shapes_are_checked():
    start, end, t, mask = _case()
    boosted = start + 5.0 * t
    assert span_pointer_loss(boosted, end, t, t, mask) < span_pointer_loss(start, end, t, t, mask)
    with pytest.raises(ValueError, match="shapes"):
        span_pointer_loss(start, end[:, :5], t, t, mask)
    with pytest.raises(ValueError, match="mode"):
        span_pointer_loss(start, end, t, t, mask, "best")
