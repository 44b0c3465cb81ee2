"""WeightedSum and build_loss: weighted components, total, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from densekd.losses import (
    LOSS_REGISTRY,
    InfoNCE,
    KLDistillation,
    ScoreBatch,
    WeightedSum,
    build_loss,
)


def _batch() -> ScoreBatch:
    torch.manual_seed(0)
    return ScoreBatch(
        student=torch.randn(2, 3, requires_grad=True), in_batch=torch.randn(2, 6), teacher=torch.randn(2, 3)
    )


def test_weighted_sum_components_and_total():
    batch = _batch()
    kl, ce = KLDistillation(student_temperature=2.0), InfoNCE()
    out = WeightedSum({"kl": (kl, 1.0), "contrastive": (ce, 0.1)})(batch)
    assert list(out) == ["kl", "contrastive", "loss"]
    torch.testing.assert_close(out["kl"], kl(batch)["kl"])
    torch.testing.assert_close(out["contrastive"], 0.1 * ce(batch)["contrastive"])
    torch.testing.assert_close(out["loss"], out["kl"] + out["contrastive"])
    out["loss"].backward()
    assert batch.student.grad is not None


def test_a_weight_0_term_is_off_even_on_label_free_groups():
    """{kl: 1, contrastive: 0} accepts label-free groups (needs_labels is False) and trains them as KL alone."""
    batch = _batch()
    free = ScoreBatch(student=batch.student, in_batch=batch.in_batch, teacher=batch.teacher,
                      label_mask=torch.zeros(2, 3, dtype=torch.bool))
    loss = build_loss({"kl": {}, "contrastive": {"weight": 0.0}})
    assert not loss.needs_labels
    with pytest.raises(ValueError):
        InfoNCE()(free)  # the term it switches off would refuse this batch
    out = loss(free)
    assert list(out) == ["kl", "loss"]
    torch.testing.assert_close(out["loss"], KLDistillation()(free)["kl"])
    with pytest.raises(ValueError, match="weight 0"):
        build_loss({"kl": {"weight": 0.0}})(free)


def test_weighted_sum_names_components_by_its_own_keys():
    class TwoParts(nn.Module):
        def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
            return {"a": scores.student.sum(), "b": scores.student.mean()}

    out = WeightedSum({"ce": (InfoNCE(), 2.0), "multi": (TwoParts(), 0.5)})(_batch())
    assert sorted(out) == ["ce", "loss", "multi/a", "multi/b"]


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        ({}, "at least one"),
        ({"loss": (InfoNCE(), 1.0)}, "bad loss name"),
        ({"a.b": (InfoNCE(), 1.0)}, "bad loss name"),
        ({"training": (InfoNCE(), 1.0)}, "bad loss name"),
        ({"ce": InfoNCE()}, "expected"),
        ({"ce": (InfoNCE(), -1.0)}, "weight"),
        ({"ce": (InfoNCE(), float("nan"))}, "weight"),
    ],
)
def test_weighted_sum_rejects_bad_entries(losses, message):
    with pytest.raises(ValueError, match=message):
        WeightedSum(losses)


def test_weighted_sum_rejects_duplicate_component_names():
    class Clash(nn.Module):
        def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
            return {"x": scores.student.sum(), "y": scores.student.sum()}

    loss = WeightedSum({"c": (Clash(), 1.0), "c/x": (InfoNCE(), 1.0)})
    with pytest.raises(ValueError, match="duplicate"):
        loss(_batch())


def test_build_loss_from_config():
    loss = build_loss({
        "kl": {"weight": 1.0, "student_temperature": 2.0},
        "contrastive": {"weight": 0.1, "temperature": 0.05},
        "hard_ce": {"type": "contrastive", "weight": 0.5, "use_in_batch": False},
        "margin_mse": None,
    })
    assert loss.weights == {"kl": 1.0, "contrastive": 0.1, "hard_ce": 0.5, "margin_mse": 1.0}
    assert loss.losses["kl"].student_temperature == 2.0
    assert loss.losses["hard_ce"].use_in_batch is False
    out = loss(_batch())
    assert sorted(out) == ["contrastive", "hard_ce", "kl", "loss", "margin_mse"]


def test_registry_names_match_component_names():
    batch = _batch()
    for name, cls in LOSS_REGISTRY.items():
        if getattr(cls, "score_heads", ()):  # multi-head losses (ernie): tests/ernie checks their components
            continue
        assert list(cls()(batch)) == [name]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "empty"),
        ({"klx": {}}, "'klx'"),
        ({"ce": {"type": "nope"}}, "'nope'"),
        ({"kl": {"temprature": 2.0}}, "'temprature'"),
        ({"margin_mse": {"scale": 2.0}}, "'scale'"),
        ({"kl": {"weight": "heavy"}}, "'weight'"),
        ({"kl": {"weight": -1.0}}, "weight"),
        ({"kl": 1.0}, "mapping"),
    ],
)
def test_build_loss_errors_name_the_bad_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_loss(spec)
