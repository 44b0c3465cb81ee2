"""InfoNCE: hand-computed values, the in-batch variant, masking and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densekd.losses import InfoNCE, ScoreBatch, info_nce_loss

STUDENT = [[3.0, 1.0, 0.5], [1.0, 2.0, 0.5]]


def test_group_infonce_hand_computed():
    loss = InfoNCE(temperature=0.5)(ScoreBatch(student=torch.tensor(STUDENT)))["contrastive"]
    # scores / 0.5: row 0 -> (6, 2, 1), row 1 -> (2, 4, 1); positive is column 0
    row0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(2) + math.exp(1)))
    row1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(4) + math.exp(1)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_infonce_equals_negative_log_softmax_at_positive():
    torch.manual_seed(0)
    student = torch.randn(5, 4)
    loss = InfoNCE(temperature=0.1)(ScoreBatch(student=student))["contrastive"]
    expected = -torch.log_softmax(student / 0.1, dim=-1)[:, 0].mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, F.cross_entropy(student / 0.1, torch.zeros(5, dtype=torch.long)))


def _in_batch_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Student [2, 3] and an in-batch matrix [2, 6] whose own-group blocks equal the student rows."""
    student = torch.tensor(STUDENT)
    in_batch = torch.tensor([
        [3.0, 1.0, 0.5, 0.0, -1.0, 2.0],  # row 0: own group in columns 0..2, query 1's passages after
        [1.5, 0.0, 0.2, 1.0, 2.0, 0.5],  # row 1: query 0's passages first, own group in columns 3..5
    ])
    return student, in_batch


def test_in_batch_infonce_hand_computed():
    student, in_batch = _in_batch_example()
    loss = InfoNCE(temperature=1.0)(ScoreBatch(student=student, in_batch=in_batch))["contrastive"]
    e = math.exp
    row0 = -math.log(e(3.0) / (e(3.0) + e(1.0) + e(0.5) + e(0.0) + e(-1.0) + e(2.0)))
    row1 = -math.log(e(1.0) / (e(1.5) + e(0.0) + e(0.2) + e(1.0) + e(2.0) + e(0.5)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_in_batch_and_group_variants_differ_by_the_extra_negatives():
    student, in_batch = _in_batch_example()
    batch = ScoreBatch(student=student, in_batch=in_batch)
    in_batch_loss = InfoNCE(temperature=1.0)(batch)["contrastive"].item()
    group_loss = InfoNCE(temperature=1.0, use_in_batch=False)(batch)["contrastive"].item()
    # per row: -log(e^pos / (Z_own + Z_other)) = -log(e^pos / Z_own) + log(1 + Z_other / Z_own)
    e = math.exp
    z_own = [e(3.0) + e(1.0) + e(0.5), e(1.0) + e(2.0) + e(0.5)]
    z_other = [e(0.0) + e(-1.0) + e(2.0), e(1.5) + e(0.0) + e(0.2)]
    extra = sum(math.log(1 + o / w) for o, w in zip(z_other, z_own)) / 2
    assert in_batch_loss - group_loss == pytest.approx(extra, rel=1e-6)
    # without an in-batch matrix the in-batch variant falls back to the group
    fallback = InfoNCE(temperature=1.0)(ScoreBatch(student=student))["contrastive"]
    assert fallback.item() == pytest.approx(group_loss)


def test_gathered_in_batch_uses_offset_for_the_positive():
    # this rank's 2 queries are queries 1 and 2 of a gathered batch of 3 (G = 1): positives at 1, 2
    in_batch = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]])
    batch = ScoreBatch(student=torch.zeros(2, 1), in_batch=in_batch, in_batch_offset=1)
    loss = InfoNCE(temperature=1.0)(batch)["contrastive"]
    expected = F.cross_entropy(in_batch, torch.tensor([1, 2]))
    torch.testing.assert_close(loss, expected)


def test_masked_candidates_are_excluded_and_get_no_gradient():
    student = torch.tensor([[3.0, 1.0, float("nan")], [1.0, 2.0, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = InfoNCE(temperature=1.0, use_in_batch=False)(ScoreBatch(student=student, mask=mask))["contrastive"]
    row0 = -math.log(math.exp(3) / (math.exp(3) + math.exp(1)))
    row1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(0.5)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert student.grad[0, 2] == 0 and torch.isfinite(student.grad).all()


def test_in_batch_mask_hides_padded_passages_of_other_queries():
    student, in_batch = _in_batch_example()
    mask = torch.tensor([[True, True, True], [True, True, False]])  # query 1's last passage is padding
    loss = InfoNCE(temperature=1.0)(ScoreBatch(student=student, in_batch=in_batch, mask=mask))["contrastive"]
    col_mask = mask.reshape(-1)
    expected = F.cross_entropy(in_batch.masked_fill(~col_mask, float("-inf")), torch.tensor([0, 3]))
    torch.testing.assert_close(loss, expected)


def test_row_with_padded_positive_is_dropped():
    logits = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    mask = torch.tensor([[False, True], [True, True]])
    loss = info_nce_loss(logits, torch.tensor([0, 0]), temperature=1.0, mask=mask)
    assert loss.item() == pytest.approx(-math.log(math.exp(0.5) / (math.exp(0.5) + 1.0)), rel=1e-6)


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCE(temperature=0.0)


def test_unlabelled_candidates_are_not_the_querys_negatives():
    """label_mask=False columns (ADAM dark examples) drop out of the query's own softmax exactly as if they
    were not there; in the in-batch matrix other queries still see them as negatives."""
    torch.manual_seed(0)
    b, g = 3, 4
    student, in_batch = torch.randn(b, g), torch.randn(b, b * g)
    for i in range(b):
        in_batch[i, i * g:(i + 1) * g] = student[i]
    labelled = torch.tensor([[True, True, False, False], [True, True, True, False], [True, True, True, True]])
    group = InfoNCE(use_in_batch=False)(ScoreBatch(student=student, label_mask=labelled))["contrastive"]
    expected = torch.stack([F.cross_entropy(student[i, labelled[i]][None] / 0.05, torch.tensor([0]))
                            for i in range(b)]).mean()
    torch.testing.assert_close(group, expected)
    full = InfoNCE()(ScoreBatch(student=student, in_batch=in_batch, label_mask=labelled))["contrastive"]
    rows = []
    for i in range(b):
        keep = torch.ones(b * g, dtype=torch.bool)
        keep[i * g:(i + 1) * g] = labelled[i]
        target = int(keep[:i * g].sum())  # the positive's column once the dropped ones are gone
        rows.append(F.cross_entropy(in_batch[i, keep][None] / 0.05, torch.tensor([target])))
    torch.testing.assert_close(full, torch.stack(rows).mean())
    # all labelled: the same as no label mask at all
    plain = InfoNCE()(ScoreBatch(student=student, in_batch=in_batch))["contrastive"]
    torch.testing.assert_close(InfoNCE()(ScoreBatch(student=student, in_batch=in_batch,
                                                    label_mask=torch.ones(b, g, dtype=torch.bool)))["contrastive"],
                               plain)
