"""Properties every loss shares: instance weights, padding, all-zero weights, teacher gradients."""

from __future__ import annotations

import pytest
import torch

from densekd.losses import InfoNCE, KLDistillation, ListNet, MarginMSE, RankNet, ScoreBatch, ScoreMSE

LOSSES = {
    "contrastive_group": InfoNCE(temperature=0.5, use_in_batch=False),
    "contrastive_in_batch": InfoNCE(temperature=0.5),
    "kl": KLDistillation(student_temperature=2.0, teacher_temperature=0.5),
    "margin_mse": MarginMSE(),
    "mse": ScoreMSE(),
    "listnet": ListNet(),
    "ranknet": RankNet(),
}


def _value(loss: torch.nn.Module, batch: ScoreBatch) -> torch.Tensor:
    (value,) = loss(batch).values()
    return value


def _random_batch(b: int = 3, g: int = 4, seed: int = 0, **kwargs) -> ScoreBatch:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(b, g, generator=gen).requires_grad_(True)
    in_batch = torch.randn(b, b * g, generator=gen).requires_grad_(True)
    teacher = torch.randn(b, g, generator=gen) * 3
    return ScoreBatch(student=student, in_batch=in_batch, teacher=teacher, **kwargs)


def _row(batch: ScoreBatch, i: int) -> ScoreBatch:
    """Query ``i`` alone; its in-batch row keeps every column, the offset points at its positive."""
    return ScoreBatch(
        student=batch.student[i : i + 1], in_batch=batch.in_batch[i : i + 1],
        teacher=batch.teacher[i : i + 1], in_batch_offset=i * batch.group_size,
    )


@pytest.mark.parametrize("name", LOSSES)
def test_weighted_mean_of_per_instance_losses(name):
    loss = LOSSES[name]
    base = _random_batch()
    per_row = torch.stack([_value(loss, _row(base, i)) for i in range(3)])
    weights = torch.tensor([0.5, 0.0, 2.0])
    weighted = _value(loss, _random_batch(weights=weights))
    expected = (weights * per_row).sum() / weights.sum()
    torch.testing.assert_close(weighted, expected)
    # uniform weights of any scale equal no weights
    torch.testing.assert_close(_value(loss, _random_batch(weights=torch.full((3,), 7.0))), _value(loss, base))


@pytest.mark.parametrize("name", LOSSES)
def test_all_zero_weights_give_zero_loss_and_finite_grads(name):
    batch = _random_batch(weights=torch.zeros(3))
    value = _value(LOSSES[name], batch)
    assert value.item() == 0.0
    value.backward()
    for t in (batch.student, batch.in_batch):
        assert t.grad is None or (torch.isfinite(t.grad).all() and torch.all(t.grad == 0))


@pytest.mark.parametrize("name", LOSSES)
def test_padding_equals_dropping_the_candidate(name):
    """A padded candidate, whatever its score (even inf/NaN), acts as if it was never there."""
    loss = LOSSES[name]
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 4, generator=gen), torch.randn(2, 4, generator=gen)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    poisoned = student.clone()
    poisoned[0, 2] = float("nan")
    padded_teacher = teacher.clone()
    padded_teacher[0, 2] = float("inf")
    padded_student = poisoned.clone().requires_grad_(True)
    value = _value(loss, ScoreBatch(student=padded_student, teacher=padded_teacher, mask=mask))
    keep = [0, 1, 3]
    row0 = _value(loss, ScoreBatch(student=student[:1, keep], teacher=teacher[:1, keep]))
    row1 = _value(loss, ScoreBatch(student=student[1:], teacher=teacher[1:]))
    torch.testing.assert_close(value, (row0 + row1) / 2)
    value.backward()
    assert padded_student.grad[0, 2] == 0 and torch.isfinite(padded_student.grad).all()


@pytest.mark.parametrize("name", ["kl", "margin_mse", "mse", "listnet", "ranknet"])
def test_teacher_receives_no_gradient(name):
    student = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    _value(LOSSES[name], ScoreBatch(student=student, teacher=teacher)).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_half_precision_scores_give_float32_loss(name):
    batch = _random_batch()
    half = ScoreBatch(
        student=batch.student.detach().half(), in_batch=batch.in_batch.detach().half(),
        teacher=batch.teacher.half(),
    )
    value = _value(LOSSES[name], half)
    assert value.dtype == torch.float32 and torch.isfinite(value)
