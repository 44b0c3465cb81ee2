"""KL distillation: hand-computed value, batchmean semantics, temperatures, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from densekd.losses import KLDistillation, ScoreBatch, kl_distillation_loss

STUDENT = [[3.0, 1.0, 0.5], [1.0, 2.0, 0.5]]
TEACHER = [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]


def softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _batch(**kwargs) -> ScoreBatch:
    return ScoreBatch(student=torch.tensor(STUDENT), teacher=torch.tensor(TEACHER), **kwargs)


def test_kl_hand_computed():
    loss = KLDistillation()(_batch())["kl"]
    # batchmean: sum over the 3 candidates, mean over the 2 queries
    rows = [kl(softmax(t), softmax(s)) for s, t in zip(STUDENT, TEACHER)]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_kl_hand_computed_with_temperatures_and_t2():
    loss = KLDistillation(student_temperature=2.0, teacher_temperature=0.5)(_batch())["kl"]
    rows = [
        kl(softmax([x / 0.5 for x in t]), softmax([x / 2.0 for x in s])) for s, t in zip(STUDENT, TEACHER)
    ]
    assert loss.item() == pytest.approx(2.0**2 * sum(rows) / 2, rel=1e-6)


def test_matches_torch_kldivloss_batchmean():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    expected = nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s, -1), torch.softmax(t, -1))
    torch.testing.assert_close(kl_distillation_loss(s, t), expected)


def test_kl_of_identical_distributions_is_zero():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    assert kl_distillation_loss(x, x.clone()).abs().item() < 1e-6
    # same distribution reached through different temperatures: softmax(2x / 2) == softmax(x / 1)
    assert kl_distillation_loss(2 * x, x, student_temperature=2.0).abs().item() < 1e-6


def test_kl_is_non_negative_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        s, t = torch.randn(3, 7, generator=gen) * 5, torch.randn(3, 7, generator=gen) * 5
        mask = torch.rand(3, 7, generator=gen) > 0.3
        assert kl_distillation_loss(s, t).item() >= -1e-6
        assert kl_distillation_loss(s, t, mask=mask).item() >= -1e-6


def test_higher_teacher_temperature_flattens_target():
    torch.manual_seed(0)
    teacher = torch.randn(4, 8) * 3
    uniform_student = torch.zeros(4, 8)
    values = [
        kl_distillation_loss(uniform_student, teacher, teacher_temperature=t).item()
        for t in (0.5, 1.0, 2.0, 4.0)
    ]
    assert all(a > b for a, b in zip(values, values[1:]))
    # KL to a uniform student = log G - H(target): the target's entropy grows with the temperature
    assert values[-1] < math.log(8) and values[-1] > 0


def test_t2_scaling_factor_uses_student_temperature():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    scaled = kl_distillation_loss(s, t, student_temperature=3.0, teacher_temperature=2.0)
    raw = kl_distillation_loss(s, t, student_temperature=3.0, teacher_temperature=2.0, scale_by_t2=False)
    torch.testing.assert_close(scaled, 9.0 * raw)


def test_masked_candidate_excluded_from_both_distributions():
    student = torch.tensor([[3.0, 1.0, 50.0], [1.0, 2.0, 0.5]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, float("inf")], [0.5, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = KLDistillation()(ScoreBatch(student=student, teacher=teacher, mask=mask))["kl"]
    rows = [kl(softmax([2.0, 0.0]), softmax([3.0, 1.0])), kl(softmax(TEACHER[1]), softmax(STUDENT[1]))]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    loss.backward()
    assert student.grad[0, 2] == 0 and torch.isfinite(student.grad).all()


def test_all_masked_row_is_dropped_without_nan():
    student = torch.tensor(STUDENT, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, True, True]])
    loss = KLDistillation()(ScoreBatch(student=student, teacher=torch.tensor(TEACHER), mask=mask))["kl"]
    assert loss.item() == pytest.approx(kl(softmax(TEACHER[1]), softmax(STUDENT[1])), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all() and torch.all(student.grad[0] == 0)


def test_teacher_gets_no_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    KLDistillation()(ScoreBatch(student=student, teacher=teacher))["kl"].backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


def test_missing_teacher_raises():
    with pytest.raises(ValueError, match="teacher"):
        KLDistillation()(ScoreBatch(student=torch.zeros(2, 3)))


# ----------------------------------------------------------------------------- in-batch variant
def _in_batch_matrix(student: torch.Tensor) -> torch.Tensor:
    """``[B, B*G]`` in-batch scores whose own-group block equals ``student`` (others random)."""
    b, g = student.shape
    torch.manual_seed(0)
    full = torch.randn(b, b * g)
    for i in range(b):
        full[i, i * g:(i + 1) * g] = student[i]
    return full


def test_in_batch_kl_with_one_query_equals_group_kl():
    student, teacher = torch.tensor(STUDENT[:1]), torch.tensor(TEACHER[:1])
    a = KLDistillation(use_in_batch=True)(ScoreBatch(student=student, teacher=teacher, in_batch=student))["kl"]
    b = kl_distillation_loss(student, teacher)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_in_batch_kl_is_at_least_group_kl():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    batch = ScoreBatch(student=student, teacher=teacher, in_batch=_in_batch_matrix(student))
    in_batch = KLDistillation(use_in_batch=True)(batch)["kl"].item()
    group = KLDistillation(use_in_batch=False)(batch)["kl"].item()
    assert in_batch > group + 1e-3  # other queries' passages take student mass the teacher gives none


def test_in_batch_kl_sees_a_collapsed_query_tower():
    # every query scores every passage alike (a collapsed query tower) and matches the teacher inside its
    # group: the group KL is 0, the in-batch KL is exactly log(B) (1/B of the mass on the own group)
    b, g = 4, 3
    teacher = torch.tensor([[2.0, 0.5, -1.0]]).repeat(b, 1)
    student = teacher.clone()
    in_batch = teacher[0].repeat(b, b)  # [B, B*G]: row i = the same G scores tiled B times
    batch = ScoreBatch(student=student, teacher=teacher, in_batch=in_batch)
    assert KLDistillation()(batch)["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert KLDistillation(use_in_batch=True)(batch)["kl"].item() == pytest.approx(math.log(b), abs=1e-5)


def test_in_batch_kl_pushes_other_queries_passages_down_only():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    in_batch = _in_batch_matrix(student).requires_grad_(True)
    KLDistillation(use_in_batch=True)(ScoreBatch(student=student, teacher=teacher, in_batch=in_batch))["kl"].backward()
    g = student.shape[1]
    for i in range(student.shape[0]):
        others = torch.cat([in_batch.grad[i, :i * g], in_batch.grad[i, (i + 1) * g:]])
        assert (others > 0).all()  # descending the gradient lowers every foreign passage's score


def test_in_batch_kl_respects_padding_masks():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    in_batch = _in_batch_matrix(student)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    col_mask = mask.reshape(-1)
    a = KLDistillation(use_in_batch=True)(ScoreBatch(student=student, teacher=teacher, in_batch=in_batch,
                                                     mask=mask, in_batch_mask=col_mask))["kl"]
    # a padded column's score must not matter
    in_batch2 = in_batch.clone()
    in_batch2[:, 2] = 100.0
    b = KLDistillation(use_in_batch=True)(ScoreBatch(student=student, teacher=teacher, in_batch=in_batch2,
                                                     mask=mask, in_batch_mask=col_mask))["kl"]
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), abs=1e-6)
