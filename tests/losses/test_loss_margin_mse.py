"""MarginMSE and ScoreMSE: hand-computed values, invariances, shape validation, masking."""

from __future__ import annotations

import pytest
import torch

from densekd.losses import MarginMSE, ScoreBatch, ScoreMSE, margin_mse_loss, score_mse_loss

STUDENT = [[3.0, 1.0, 0.5], [1.0, 2.0, 0.5]]
TEACHER = [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]


def _batch(**kwargs) -> ScoreBatch:
    return ScoreBatch(student=torch.tensor(STUDENT), teacher=torch.tensor(TEACHER), **kwargs)


def test_margin_mse_hand_computed():
    loss = MarginMSE()(_batch())["margin_mse"]
    # row 0: student margins (3-1, 3-0.5) = (2, 2.5); teacher (2-0, 2+1) = (2, 3); errors 0, 0.25
    # row 1: student margins (1-2, 1-0.5) = (-1, 0.5); teacher (0.5-1, 0.5-0) = (-0.5, 0.5); errors 0.25, 0
    row0 = (0.0**2 + 0.5**2) / 2
    row1 = (0.5**2 + 0.0**2) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_margin_mse_zero_when_margins_equal():
    torch.manual_seed(0)
    teacher = torch.randn(4, 5)
    student = teacher + torch.randn(4, 1)  # same margins, different per-query offset
    assert margin_mse_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-10)


def test_margin_mse_student_temperature_scales_the_student_side_only():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    # dividing the student's scores by T is the same loss as feeding s / T at T = 1
    torch.testing.assert_close(margin_mse_loss(s, t, student_temperature=0.05), margin_mse_loss(s / 0.05, t))
    # a cosine student whose margins are the teacher's times T costs nothing at that temperature
    assert margin_mse_loss(0.05 * t, t, student_temperature=0.05).item() == pytest.approx(0.0, abs=1e-10)
    module = MarginMSE(student_temperature=0.5)(_batch())["margin_mse"]
    torch.testing.assert_close(module, margin_mse_loss(torch.tensor(STUDENT), torch.tensor(TEACHER),
                                                       student_temperature=0.5))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="student_temperature"):
            MarginMSE(student_temperature=bad)


def test_margin_mse_invariant_to_per_query_constants():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    base = margin_mse_loss(s, t)
    torch.testing.assert_close(margin_mse_loss(s + torch.randn(4, 1), t), base)
    torch.testing.assert_close(margin_mse_loss(s, t - 7.0 * torch.rand(4, 1)), base)


def test_margin_mse_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        margin_mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="G=1"):
        margin_mse_loss(torch.zeros(2, 1), torch.zeros(2, 1))


def test_margin_mse_masked_negative_skipped_with_zero_grad():
    student = torch.tensor([[3.0, 1.0, float("-inf")], [1.0, 2.0, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    teacher = torch.tensor(TEACHER)
    loss = MarginMSE()(ScoreBatch(student=student, teacher=teacher, mask=mask))["margin_mse"]
    row0 = 0.0  # only negative 1 remains: margins 2 and 2
    row1 = (0.5**2 + 0.0**2) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert student.grad[0, 2] == 0 and torch.isfinite(student.grad).all()


def test_score_mse_hand_computed():
    loss = ScoreMSE()(_batch())["mse"]
    # row 0 differences (1, 1, 1.5); row 1 differences (0.5, 1, 0.5)
    row0 = (1.0**2 + 1.0**2 + 1.5**2) / 3
    row1 = (0.5**2 + 1.0**2 + 0.5**2) / 3
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_score_mse_masked():
    mask = torch.tensor([[True, False, True], [True, True, True]])
    loss = score_mse_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), mask=mask)
    row0 = (1.0**2 + 1.5**2) / 2
    row1 = (0.5**2 + 1.0**2 + 0.5**2) / 3
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.mark.parametrize("loss", [MarginMSE(), ScoreMSE()])
def test_missing_teacher_raises(loss):
    with pytest.raises(ValueError, match="teacher"):
        loss(ScoreBatch(student=torch.zeros(2, 3)))
