"""Label-free groups (a teacher without passage labels): no fake positive, and label-based losses refuse them."""

from __future__ import annotations

import pytest
import torch

from densekd.data.types import Passage, Query, TrainGroup
from densekd.losses import InfoNCE, KLDistillation, ScoreBatch, build_loss
from densekd.pipeline.fidkd import label_free
from densekd.training.collator import DistillCollator
from densekd.training.dataset import TrainGroupDataset

SCORES = {"a": 0.5, "b": 2.0, "c": 2.0, "d": -1.0}  # retrieval order a, b, c, d; b and c tie for the top
QUERIES = {"q": Query("q", "question"), "r": Query("r", "another")}
CORPUS = {p: Passage(p, f"text {p}") for p in "abcd"}


def _free(qid: str = "q") -> TrainGroup:
    return TrainGroup(qid, [], list(SCORES), dict(SCORES))


def test_a_label_free_group_needs_teacher_scores_and_a_candidate():
    group = _free()
    group.validate()
    assert not group.labelled and group.anchor_id() == "b"  # the first of the tied favourites
    with pytest.raises(ValueError, match="no positive"):
        TrainGroup("q", [], ["a"]).validate()
    with pytest.raises(ValueError, match="no candidate"):
        TrainGroup("q", [], [], {}).validate()
    assert TrainGroup.from_json(group.to_json()) == group


def test_datasets_refuse_label_free_groups_unless_allowed():
    with pytest.raises(ValueError, match="has no positive.*allow_label_free"):
        TrainGroupDataset([_free()], QUERIES, CORPUS, group_size=3)
    unchecked = TrainGroupDataset([_free()], QUERIES, CORPUS, group_size=3, check_ids=False)
    with pytest.raises(ValueError, match="allow_label_free"):
        unchecked[0]


@pytest.mark.parametrize("sampling", ["top", "random"])
def test_label_free_items_equal_the_old_favourite_first_items_but_say_unlabelled(sampling):
    """The reader -> retriever loop once stored its favourite as a positive: the same groups read label-free
    draw exactly the same candidates in every epoch, so the retrievers cached from them stay valid."""
    old = TrainGroup("q", ["b"], ["a", "c", "d"], dict(SCORES))
    assert label_free(old) == _free()
    kw = {"group_size": 3, "seed": 5, "negative_sampling": sampling}
    then = TrainGroupDataset([old], QUERIES, CORPUS, **kw)
    now = TrainGroupDataset([label_free(old)], QUERIES, CORPUS, allow_label_free=True, **kw)
    for epoch in range(4):
        a, b = then.item(0, epoch), now.item(0, epoch)
        assert b.pop("labelled") is False and "labelled" not in a
        assert a.pop("positives") == ["b"] and b.pop("positives") == []  # no positive, no in-batch exclusion
        assert a == b
        assert b["pids"][0] == "b"


def test_the_collator_marks_every_candidate_of_a_label_free_row_unlabelled():
    ds = TrainGroupDataset([TrainGroup("r", ["a"], ["b", "c"], dict(SCORES)), _free()], QUERIES, CORPUS,
                           group_size=3, negative_sampling="top", allow_label_free=True)
    collate = DistillCollator(lambda texts: {"input_ids": torch.zeros(len(texts), 2, dtype=torch.long)})
    batch = collate([ds[0], ds[1]])
    assert batch["label_mask"].tolist() == [[True, True, True], [False, False, False]]
    assert "label_mask" not in collate([ds[0]])  # labelled batches keep their exact old keys


def test_label_based_losses_refuse_label_free_rows_and_teacher_losses_ignore_them():
    student, teacher = torch.randn(2, 3), torch.randn(2, 3)
    free = torch.tensor([[True, True, True], [False, False, False]])
    for in_batch in (None, torch.randn(2, 6)):
        batch = ScoreBatch(student=student, teacher=teacher, in_batch=in_batch, label_mask=free)
        with pytest.raises(ValueError, match="label-free"):
            InfoNCE()(batch)
        plain = ScoreBatch(student=student, teacher=teacher, in_batch=in_batch)
        kl = KLDistillation(use_in_batch=True)
        assert torch.equal(kl(batch)["kl"], kl(plain)["kl"])
    assert build_loss({"kl": {}, "contrastive": {"weight": 0.1}}).needs_labels
    assert not build_loss({"kl": {}, "contrastive": {"weight": 0.0}}).needs_labels
    assert not build_loss({"kl": {}, "margin_mse": {}}).needs_labels
    assert build_loss({"ernie": {}}).needs_labels
    assert not build_loss({"ernie": {"dense_contrastive_weight": 0, "colbert_contrastive_weight": 0}}).needs_labels
