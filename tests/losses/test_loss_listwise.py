"""ListNet and RankNet: hand-computed values, relation to KL, ties and masking."""

from __future__ import annotations

import math

import pytest
import torch

from densekd.losses import ListNet, RankNet, ScoreBatch, kl_distillation_loss, listnet_loss, ranknet_loss

STUDENT = [[3.0, 1.0, 0.5], [1.0, 2.0, 0.5]]
TEACHER = [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]


def softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _batch(**kwargs) -> ScoreBatch:
    return ScoreBatch(student=torch.tensor(STUDENT), teacher=torch.tensor(TEACHER), **kwargs)


def test_listnet_hand_computed():
    loss = ListNet()(_batch())["listnet"]
    rows = [-sum(p * math.log(q) for p, q in zip(softmax(t), softmax(s))) for s, t in zip(STUDENT, TEACHER)]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_listnet_is_kl_plus_teacher_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    p = torch.softmax(t, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(listnet_loss(s, t), kl_distillation_loss(s, t) + entropy)


def test_ranknet_hand_computed():
    loss = RankNet()(_batch())["ranknet"]
    pair = lambda diff: math.log(1 + math.exp(-diff))  # noqa: E731
    # row 0, teacher order 0 > 1 > 2: student differences s0-s1=2, s0-s2=2.5, s1-s2=0.5
    row0 = (pair(2.0) + pair(2.5) + pair(0.5)) / 3
    # row 1, teacher order 1 > 0 > 2: s1-s0=1, s0-s2=0.5, s1-s2=1.5
    row1 = (pair(1.0) + pair(0.5) + pair(1.5)) / 3
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_ranknet_ignores_teacher_ties_and_drops_rows_without_pairs():
    student = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 0: no pair; row 1: (0,2), (1,2)
    loss = ranknet_loss(student, teacher)
    expected = (math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(-2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ranknet_masked_candidate_in_no_pair():
    student = torch.tensor([[3.0, 1.0, 0.5]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    loss = RankNet()(ScoreBatch(student=student, teacher=teacher, mask=mask))["ranknet"]
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    loss.backward()
    assert student.grad[0, 2] == 0


@pytest.mark.parametrize("loss", [ListNet(), RankNet()])
def test_missing_teacher_raises(loss):
    with pytest.raises(ValueError, match="teacher"):
        loss(ScoreBatch(student=torch.zeros(2, 3)))
