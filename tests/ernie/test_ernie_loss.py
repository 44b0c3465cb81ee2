"""ErnieSearchLoss: cascade composition by hand, the detach knob, heads and teacher requirements."""

from __future__ import annotations

import pytest
import torch

from densekd.losses import ErnieSearchLoss, ScoreBatch, build_loss, kl_distillation_loss
from densekd.losses.ernie import ErnieLossSettings, ernie_search_loss

B, G = 3, 4


def _scores(seed: int = 0, in_batch: bool = True) -> tuple[ScoreBatch, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, G, generator=gen).tanh().requires_grad_(True)
    colbert = (torch.randn(B, G, generator=gen) * 4).requires_grad_(True)
    teacher = torch.randn(B, G, generator=gen) * 3
    extra_d = {"in_batch": torch.randn(B, B * G, generator=gen).tanh()} if in_batch else {}
    extra_c = {"in_batch": torch.randn(B, B * G, generator=gen) * 4} if in_batch else {}
    batch = ScoreBatch(student=dense, teacher=teacher, **extra_d,
                       heads={"colbert": ScoreBatch(student=colbert, teacher=teacher, **extra_c)})
    return batch, dense, colbert


def _kl(student: torch.Tensor, teacher: torch.Tensor, ts: float, tt: float) -> torch.Tensor:
    p = torch.softmax(teacher / tt, dim=-1)
    return (p * (torch.log(p) - torch.log_softmax(student / ts, dim=-1))).sum(-1).mean()


def _nce(logits: torch.Tensor, targets: torch.Tensor, t: float) -> torch.Tensor:
    return -torch.log_softmax(logits / t, dim=-1)[torch.arange(len(targets)), targets].mean()


def test_ernie_cascade_loss_is_the_weighted_sum_of_its_hand_computed_parts():
    batch, dense, colbert = _scores()
    teacher, colbert_batch = batch.teacher, batch.heads["colbert"]
    settings = dict(dense_contrastive_weight=0.3, colbert_contrastive_weight=0.2, colbert_to_dense_weight=1.5,
                    ce_to_colbert_weight=0.7, ce_to_dense_weight=0.4, dense_temperature=0.1,
                    colbert_temperature=2.0, teacher_temperature=0.5)
    td, tc, tt = 0.1, 2.0, 0.5
    positives = torch.arange(B) * G  # in-batch column of each query's positive
    expected = {
        "contrastive_dense": 0.3 * _nce(batch.in_batch, positives, td),
        "contrastive_colbert": 0.2 * _nce(colbert_batch.in_batch, positives, tc),
        "kl_colbert_to_dense": 1.5 * _kl(dense, colbert, td, tc),
        "kl_ce_to_colbert": 0.7 * _kl(colbert, teacher, tc, tt),
        "kl_ce_to_dense": 0.4 * _kl(dense, teacher, td, tt),
    }
    out = ErnieSearchLoss(**settings)(batch)
    assert out.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, msg=name)
    # through build_loss: components logged as ernie/<part>, scaled by the outer weight, summed in "loss"
    total = build_loss({"ernie": {"weight": 2.0, **settings}})(batch)
    torch.testing.assert_close(total["loss"], 2.0 * sum(expected.values()))
    assert total["ernie/kl_ce_to_colbert"].item() == pytest.approx(2.0 * expected["kl_ce_to_colbert"].item())


def test_ernie_contrastive_falls_back_to_the_group_without_in_batch_scores():
    batch, dense, colbert = _scores(in_batch=False)
    out = ErnieSearchLoss(ce_to_colbert_weight=0.0, colbert_to_dense_weight=0.0, dense_contrastive_weight=1.0,
                          colbert_contrastive_weight=1.0)(batch)
    zeros = torch.zeros(B, dtype=torch.long)
    torch.testing.assert_close(out["contrastive_dense"], _nce(dense, zeros, 0.05))
    torch.testing.assert_close(out["contrastive_colbert"], _nce(colbert, zeros, 1.0))


def test_ernie_defaults_skip_the_direct_term_and_match_the_documented_settings():
    batch, _, _ = _scores()
    assert sorted(ErnieSearchLoss()(batch)) == ["contrastive_colbert", "contrastive_dense", "kl_ce_to_colbert",
                                                "kl_colbert_to_dense"]
    assert ErnieSearchLoss().settings == ErnieLossSettings()


@pytest.mark.parametrize("detach", [True, False])
def test_ernie_detach_knob_controls_the_gradient_into_the_colbert_scores(detach):
    batch, dense, colbert = _scores()
    only_sod = ErnieSearchLoss(dense_contrastive_weight=0.0, colbert_contrastive_weight=0.0,
                               ce_to_colbert_weight=0.0, detach_colbert=detach)
    out = only_sod(batch)
    assert list(out) == ["kl_colbert_to_dense"]
    out["kl_colbert_to_dense"].backward()
    assert dense.grad is not None and dense.grad.abs().sum() > 0
    if detach:
        assert colbert.grad is None
    else:
        assert colbert.grad is not None and colbert.grad.abs().sum() > 0
    # the value does not depend on the knob, only the gradient does
    again, _, _ = _scores()
    torch.testing.assert_close(out["kl_colbert_to_dense"].detach(),
                               kl_distillation_loss(again.student, again.heads["colbert"].student,
                                                    student_temperature=0.05, scale_by_t2=False))


def test_ernie_loss_respects_masks_and_weights_like_the_kl_loss():
    batch, dense, colbert = _scores()
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    weights = torch.tensor([1.0, 0.0, 2.0])
    masked = ScoreBatch(student=dense, teacher=batch.teacher, mask=mask, weights=weights,
                        heads={"colbert": ScoreBatch(student=colbert, mask=mask)})
    out = ernie_search_loss(masked, masked.heads["colbert"], ErnieLossSettings(ce_to_dense_weight=1.0))
    expected = kl_distillation_loss(dense, batch.teacher, student_temperature=0.05,
                                    teacher_temperature=ErnieLossSettings().teacher_temperature, scale_by_t2=False,
                                    mask=mask, weights=weights)
    torch.testing.assert_close(out["kl_ce_to_dense"], expected)
    assert all(torch.isfinite(v) for v in out.values())


def test_ernie_loss_errors_name_the_fix():
    batch, dense, colbert = _scores()
    with pytest.raises(ValueError, match="no score head 'colbert'"):
        ErnieSearchLoss()(ScoreBatch(student=dense, teacher=batch.teacher))
    no_teacher = ScoreBatch(student=dense, heads={"colbert": ScoreBatch(student=colbert)})
    with pytest.raises(ValueError, match="ce_to_colbert_weight=0"):
        ErnieSearchLoss()(no_teacher)
    assert "kl_colbert_to_dense" in ErnieSearchLoss(ce_to_colbert_weight=0.0)(no_teacher)  # SOD needs no teacher
    with pytest.raises(ValueError, match="nothing to train"):
        ErnieSearchLoss(dense_contrastive_weight=0, colbert_contrastive_weight=0, colbert_to_dense_weight=0,
                        ce_to_colbert_weight=0)
    with pytest.raises(ValueError, match="colbert_temperature"):
        ErnieSearchLoss(colbert_temperature=0.0)
    with pytest.raises(ValueError, match="same candidates"):
        ScoreBatch(student=dense, heads={"colbert": ScoreBatch(student=colbert[:, :2])})
    with pytest.raises(ValueError, match="'ce_to_dense'"):
        build_loss({"ernie": {"ce_to_dense": 1.0}})
