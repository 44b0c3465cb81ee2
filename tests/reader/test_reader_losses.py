"""Retriever losses of reader distillation: max-margin hand checks, and the KL direction."""

from __future__ import annotations

import math

import pytest
import torch

from densekd.losses import LOSS_REGISTRY, MarginRanking, ScoreBatch, build_loss, kl_distillation_loss
from densekd.losses.margin_ranking import margin_ranking_loss


def test_reader_margin_ranking_hand_check():
    student = torch.tensor([[0.0, 0.5, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])          # reader order: 0 > 1 > 2
    # hinge terms: (0,1) 1 + 0.5 = 1.5; (0,2) 1 + 3 = 4; (1,2) 1 + 2.5 = 3.5 -> mean 3
    assert margin_ranking_loss(student, teacher).item() == pytest.approx(3.0)
    # margin 0.5: 1.0, 3.5, 3.0 -> mean 2.5
    assert margin_ranking_loss(student, teacher, margin=0.5).item() == pytest.approx(2.5)
    # pairs already separated by the margin cost nothing
    assert margin_ranking_loss(torch.tensor([[3.0, 2.0, 0.5]]), teacher).item() == 0.0


def test_reader_margin_ranking_ties_mask_and_weights():
    teacher = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    student = torch.zeros(2, 3)
    # row 0: the tie (0,1) gives no pair -> pairs (0,2), (1,2): hinge 1 each; row 1: 3 pairs of 1
    assert margin_ranking_loss(student, teacher).item() == pytest.approx(1.0)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    weights = torch.tensor([1.0, 3.0])
    # row 0 has no pair left after masking candidate 2: dropped; only row 1 remains
    student = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    expected_row1 = (1.5 + 1.0 + 0.5) / 3                 # (0,1): 1 + 0.5; (0,2): 1; (1,2): 1 - 0.5
    value = margin_ranking_loss(student, teacher, mask=mask, weights=weights)
    assert value.item() == pytest.approx(expected_row1)


def test_reader_margin_ranking_gradient_and_registry():
    student = torch.tensor([[0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0]], requires_grad=True)
    margin_ranking_loss(student, teacher).backward()
    assert student.grad.tolist() == [[-1.0, 1.0]] and teacher.grad is None
    assert LOSS_REGISTRY["margin_ranking"] is MarginRanking
    loss = build_loss({"margin_ranking": {"margin": 0.2, "weight": 0.5}})
    out = loss(ScoreBatch(student=torch.zeros(1, 2), teacher=torch.tensor([[1.0, 0.0]])))
    assert sorted(out) == ["loss", "margin_ranking"] and out["loss"].item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="margin"):
        MarginRanking(margin=-1.0)
    with pytest.raises(ValueError, match="teacher"):
        MarginRanking()(ScoreBatch(student=torch.zeros(1, 2)))


def test_reader_kl_target_is_the_reader_distribution():
    # FiD-KD: KL(softmax(reader scores) || softmax(retriever scores)); the reader is the target
    reader = torch.tensor([[2.0, 0.0, -1.0]])
    retriever = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    p = torch.softmax(reader, dim=-1)
    log_q = torch.log_softmax(retriever, dim=-1)
    expected = (p * (p.log() - log_q)).sum()
    value = kl_distillation_loss(retriever, reader)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    # d KL / d student logits = q - p: the gradient step moves the retriever towards the reader
    torch.testing.assert_close(retriever.grad, torch.softmax(retriever, -1).detach() - p)
    assert math.isclose(kl_distillation_loss(reader, reader).item(), 0.0, abs_tol=1e-7)
