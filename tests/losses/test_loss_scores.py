"""ScoreBatch validation, score helpers, MaxSim and the single-process behaviour of the DDP gather."""

from __future__ import annotations

import pytest
import torch

from densekd.losses import ScoreBatch
from densekd.scores import gather_with_grad, global_in_batch, group_scores, in_batch_scores, maxsim, maxsim_grouped


def test_group_scores_pick_each_querys_own_candidates():
    torch.manual_seed(0)
    q, p = torch.randn(3, 4), torch.randn(3 * 2, 4)
    full = in_batch_scores(q, p)  # [3, 6]
    expected = torch.stack([full[i, i * 2 : i * 2 + 2] for i in range(3)])
    torch.testing.assert_close(group_scores(q, p, 2), expected)


def test_group_scores_rejects_wrong_passage_count():
    with pytest.raises(ValueError, match=r"\(2\*3, 4\)"):
        group_scores(torch.zeros(2, 4), torch.zeros(5, 4), 3)


def test_maxsim_hand_computed_with_padding():
    # one query: tokens a=(1,0), b=(0,1), third token padded (would add 100 if counted)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]]])
    q_mask = torch.tensor([[1, 1, 0]])
    # passage 0: tokens (2,-1), (-1,3), padded (50,50) which would win every max if allowed
    # passage 1: tokens (-1,-2), padded, padded: all similarities negative, padding (0 vector) must not win
    p = torch.tensor([
        [[2.0, -1.0], [-1.0, 3.0], [50.0, 50.0]],
        [[-1.0, -2.0], [0.0, 0.0], [0.0, 0.0]],
    ])
    p_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # passage 0: a -> max(2, -1) = 2; b -> max(-1, 3) = 3; total 5
    # passage 1: a -> -1; b -> -2; total -3
    assert maxsim(q, q_mask, p, p_mask).tolist() == [[5.0, -3.0]]


def test_maxsim_padded_tokens_get_zero_grad():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 3, requires_grad=True)
    p = torch.randn(3, 5, 3, requires_grad=True)
    q_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    p_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    with torch.no_grad():  # make padded passage tokens huge so a leak would be visible
        p[p_mask == 0] = 100.0
    maxsim(q, q_mask, p, p_mask).sum().backward()
    assert torch.all(q.grad[q_mask == 0] == 0)
    assert torch.all(p.grad[p_mask == 0] == 0)
    assert q.grad[q_mask == 1].abs().sum() > 0 and p.grad[p_mask == 1].abs().sum() > 0


def test_maxsim_all_padded_passage_scores_zero_without_nan():
    q = torch.randn(1, 2, 3, requires_grad=True)
    p = torch.randn(1, 2, 3, requires_grad=True)
    out = maxsim(q, torch.ones(1, 2), p, torch.zeros(1, 2))
    out.sum().backward()
    assert out.item() == 0.0
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()


def test_maxsim_grouped_equals_diagonal_blocks_of_maxsim():
    torch.manual_seed(0)
    b, g, lq, lp, d = 3, 2, 4, 5, 6
    q, p = torch.randn(b, lq, d), torch.randn(b * g, lp, d)
    q_mask = torch.rand(b, lq) > 0.3
    q_mask[:, 0] = True
    p_mask = torch.rand(b * g, lp) > 0.3
    p_mask[:, 0] = True
    full = maxsim(q, q_mask, p, p_mask)  # [B, B*G]
    blocks = torch.stack([full[i, i * g : (i + 1) * g] for i in range(b)])
    torch.testing.assert_close(maxsim_grouped(q, q_mask, p, p_mask, g), blocks)


def test_gather_with_grad_is_identity_without_process_group():
    assert not torch.distributed.is_initialized()
    t = torch.randn(3, 2, requires_grad=True)
    out = gather_with_grad(t)
    assert out is t
    out.sum().backward()
    assert torch.equal(t.grad, torch.ones(3, 2))


def test_global_in_batch_single_process():
    torch.manual_seed(0)
    q, p = torch.randn(2, 4), torch.randn(6, 4)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    res = global_in_batch(q, p, mask)
    torch.testing.assert_close(res.scores, q @ p.T)
    assert res.offset == 0
    assert res.mask.tolist() == mask.reshape(-1).tolist()
    assert global_in_batch(q, p).mask is None


def test_score_batch_defaults_in_batch_mask_and_positive_columns():
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    s = ScoreBatch(student=torch.zeros(2, 3), in_batch=torch.zeros(2, 6), mask=mask)
    assert s.mask.dtype == torch.bool
    assert s.in_batch_mask.tolist() == [True, True, False, True, False, True]
    assert s.positive_columns().tolist() == [0, 3]
    gathered = ScoreBatch(student=torch.zeros(2, 3), in_batch=torch.zeros(2, 12), in_batch_offset=6)
    assert gathered.positive_columns().tolist() == [6, 9]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"student": torch.zeros(2)}, r"\[B, G\]"),
        ({"teacher": torch.zeros(2, 4)}, r"\(2, 4\)"),
        ({"weights": torch.zeros(3)}, "weights"),
        ({"weights": torch.tensor([1.0, -1.0])}, "non-negative"),
        ({"mask": torch.ones(3, 3)}, "mask"),
        ({"in_batch": torch.zeros(3, 6)}, "in_batch"),
        ({"in_batch": torch.zeros(2, 6), "in_batch_offset": 3}, "last positive"),
        ({"in_batch": torch.zeros(2, 12), "mask": torch.ones(2, 3)}, "in_batch_mask"),
        ({"in_batch": torch.zeros(2, 6), "in_batch_mask": torch.ones(5)}, "in_batch_mask"),
    ],
)
def test_score_batch_rejects_bad_shapes(kwargs, message):
    fields = {"student": torch.zeros(2, 3), **kwargs}
    with pytest.raises(ValueError, match=message):
        ScoreBatch(**fields)
