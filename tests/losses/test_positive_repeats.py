"""Other queries' copies of a query's positive are no in-batch negatives of it (losses.batch.positive_repeats)."""

from __future__ import annotations

import pytest
import torch

from densekd.losses import InfoNCE, KLDistillation, ScoreBatch
from densekd.losses.batch import positive_repeats
from densekd.training.collator import DistillCollator, passage_key


def test_marks_every_positive_outside_the_own_group_only():
    # 3 queries x 2: query 0's positives are keys 1 and 5; key 1 is also query 0's own column 0
    keys = torch.tensor([1, 2, 3, 5, 1, 6])
    positives = torch.tensor([[1, 5], [3, -1], [7, -1]])
    out = positive_repeats(keys, positives, 0, 2)
    assert out.tolist() == [[False, False, False, True, True, False],   # 5 (query 1) and 1 (query 2)
                            [False, False, False, False, False, False],  # key 3 sits in its own group
                            [False, False, False, False, False, False]]  # key 7 is nowhere
    assert not out.view(3, 3, 2).diagonal(dim1=0, dim2=1).any()  # own-group blocks never marked


def test_padding_key_never_matches():
    keys = torch.tensor([0, 1])  # a key of 0 is legal; -1 is only padding
    assert not positive_repeats(keys, torch.tensor([[-1], [-1]]), 0, 1).any()


def test_gathered_offset_shifts_the_own_group():
    keys = torch.tensor([4, 4, 9, 4])  # rank 0's two columns, then this rank's group [9, 4]
    out = positive_repeats(keys, torch.tensor([[4]]), 2, 2)
    assert out.tolist() == [[True, True, False, False]]


def _batch(exclude: torch.Tensor | None) -> ScoreBatch:
    torch.manual_seed(0)
    in_batch = torch.randn(2, 6)
    student = torch.stack([in_batch[0, :3], in_batch[1, 3:]])
    return ScoreBatch(student=student, in_batch=in_batch, teacher=torch.randn(2, 3), in_batch_exclude=exclude)


@pytest.mark.parametrize("loss", [InfoNCE(temperature=0.5), KLDistillation(use_in_batch=True)])
def test_an_excluded_column_is_as_if_it_were_not_in_the_batch(loss):
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 4] = True  # query 1's candidate 1 repeats query 0's positive
    masked = next(iter(loss(_batch(exclude)).values()))
    # reference: row 0 without column 4, row 1 untouched
    full = _batch(None)
    keep = [0, 1, 2, 3, 5]
    row0 = next(iter(loss(ScoreBatch(student=full.student[:1], in_batch=full.in_batch[:1, keep],
                                     teacher=full.teacher[:1])).values()))
    row1 = next(iter(loss(ScoreBatch(student=full.student[1:], in_batch=full.in_batch[1:, [3, 4, 5, 0, 1, 2]],
                                     teacher=full.teacher[1:], in_batch_offset=0)).values()))
    torch.testing.assert_close(masked, (row0 + row1) / 2)
    assert not torch.isclose(masked, next(iter(loss(full).values())))  # the column did count before


def test_exclusion_combines_with_padding_and_label_masks():
    exclude = torch.zeros(2, 4, dtype=torch.bool)
    exclude[1, 1] = True
    s = ScoreBatch(student=torch.zeros(2, 2), in_batch=torch.zeros(2, 4), mask=torch.tensor([[True, True], [True, False]]),
                   label_mask=torch.tensor([[True, False], [True, True]]), in_batch_exclude=exclude)
    _, rows = s.contrastive_masks()
    assert rows.int().tolist() == [[1, 0, 1, 0], [1, 0, 1, 0]]
    assert s.in_batch_negatives().int().tolist() == [[1, 1, 1, 0], [1, 0, 1, 0]]


def test_rejects_a_wrongly_shaped_exclusion():
    with pytest.raises(ValueError, match="in_batch_exclude must be"):
        ScoreBatch(student=torch.zeros(2, 2), in_batch=torch.zeros(2, 4), in_batch_exclude=torch.zeros(4, dtype=torch.bool))


def test_collator_keys_cover_every_labelled_positive():
    collate = DistillCollator(lambda texts: {"input_ids": torch.zeros(len(texts), 1, dtype=torch.long)})
    items = [{"query": "a", "pids": ["p1", "n1"], "passages": ["", ""], "teacher_scores": None, "positives": ["p1", "p2"]},
             {"query": "b", "pids": ["p3", "p2"], "passages": ["", ""], "teacher_scores": None, "positives": ["p3"]}]
    batch = collate(items)
    assert batch["pid_keys"].tolist() == [[passage_key(p) for p in g] for g in (["p1", "n1"], ["p3", "p2"])]
    assert batch["positive_keys"].tolist() == [[passage_key("p1"), passage_key("p2")], [passage_key("p3"), -1]]
    # query 0's second positive p2 is query 1's negative: a false negative for query 0 only
    marked = positive_repeats(batch["pid_keys"].reshape(-1), batch["positive_keys"], 0, 2)
    assert marked.tolist() == [[False, False, False, True], [False, False, False, False]]


def test_every_score_head_of_a_multi_head_student_gets_the_exclusion():
    from densekd.training.trainer import head_score_batch

    keys = torch.tensor([[1, 2], [3, 1]])        # query 1's negative repeats query 0's positive
    positives = torch.tensor([[1], [3]])
    heads = {"dense": torch.zeros(2, 2), "dense_in_batch": torch.zeros(2, 4),
             "colbert": torch.zeros(2, 2), "colbert_in_batch": torch.zeros(2, 4)}
    batch = head_score_batch(heads, None, None, keys=(keys, positives))
    expected = [[False, False, False, True], [False, False, False, False]]
    assert batch.in_batch_exclude.tolist() == expected
    assert batch.head("colbert").in_batch_exclude.tolist() == expected
