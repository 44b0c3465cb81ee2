"""TrainGroupDataset: seeded per-(seed, epoch, idx) sampling, layout, padding, lazy look-ups."""

from __future__ import annotations

import pickle

import pytest

from densekd.data.types import Passage, Query, TrainGroup
from densekd.training.dataset import TrainGroupDataset, sample_group_ids


def _dataset(toy_data, toy_groups, **kw) -> TrainGroupDataset:
    kw = {"group_size": 4, "seed": 7, **kw}
    return TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, **kw)


def test_same_seed_and_epoch_give_the_same_items_in_any_order(toy_data, toy_groups):
    a, b = _dataset(toy_data, toy_groups), _dataset(toy_data, toy_groups)
    forward = [a[i] for i in range(len(a))]
    backward = [b[i] for i in reversed(range(len(b)))][::-1]
    assert forward == backward
    # a dataloader worker gets a pickled copy: it must produce the same items
    assert [pickle.loads(pickle.dumps(a))[i] for i in range(len(a))] == forward


def test_epoch_and_seed_change_the_sample(toy_data, toy_groups):
    ds = _dataset(toy_data, toy_groups)
    epoch0 = [ds[i]["pids"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds[i]["pids"] for i in range(len(ds))] != epoch0
    ds.set_epoch(0)
    assert [ds[i]["pids"] for i in range(len(ds))] == epoch0
    other_seed = _dataset(toy_data, toy_groups, seed=8)
    assert [other_seed[i]["pids"] for i in range(len(ds))] != epoch0


def test_item_layout_positive_first_and_teacher_scores_aligned(toy_data, toy_groups):
    ds = _dataset(toy_data, toy_groups)
    for idx, group in enumerate(toy_groups):
        item = ds[idx]
        assert item["qid"] == group.qid and item["query"] == toy_data.queries[group.qid].text
        assert len(item["pids"]) == len(item["passages"]) == len(item["teacher_scores"]) == 4
        assert item["pids"][0] in group.pos_ids
        assert set(item["pids"][1:]) <= set(group.neg_ids) and len(set(item["pids"][1:])) == 3
        assert item["passages"] == [toy_data.corpus[p].full_text() for p in item["pids"]]
        assert item["teacher_scores"] == [group.teacher_scores[p] for p in item["pids"]]


def test_random_negatives_rotate_through_all_negatives():
    group = TrainGroup("q", ["p"], [f"n{i}" for i in range(6)])
    epochs = [sample_group_ids(group, 4, seed=3, epoch=e, idx=5)[1:] for e in range(2)]
    assert set(epochs[0]) | set(epochs[1]) == set(group.neg_ids)  # 2 epochs x 3 = all 6, no repeat


def test_top_sampling_is_the_stored_prefix_every_epoch():
    group = TrainGroup("q", ["p"], ["n1", "n2", "n3", "n4"])
    for epoch in range(3):
        assert sample_group_ids(group, 3, 0, epoch, 0, negative_sampling="top") == ["p", "n1", "n2"]


def test_multiple_positives_rotate_by_epoch():
    group = TrainGroup("q", ["p1", "p2"], ["n1"])
    assert {sample_group_ids(group, 2, 0, e, 0)[0] for e in range(2)} == {"p1", "p2"}


def test_short_groups_are_padded_by_repeating():
    assert sample_group_ids(TrainGroup("q", ["p"], ["n1", "n2"]), 5, 0, 0, 0, "top") == ["p", "n1", "n2", "n1", "n2"]
    assert sample_group_ids(TrainGroup("q", ["p"], []), 3, 0, 0, 0) == ["p", "p", "p"]
    assert sample_group_ids(TrainGroup("q", ["p"], ["n"]), 1, 0, 0, 0) == ["p"]


def test_extra_passages_resolve_by_id_and_texts_are_not_copied():
    corpus = {"d1": Passage("d1", "real")}
    queries = {"q": Query("q", "question")}
    group = TrainGroup("q", ["d1"], ["dark1"], extra_passages={"dark1": "synthetic text"})
    ds = TrainGroupDataset([group], queries, corpus, group_size=2)
    assert ds[0]["passages"] == ["real", "synthetic text"] and ds[0]["teacher_scores"] is None
    assert ds.corpus is corpus and ds.queries is queries


@pytest.mark.parametrize("group, match", [
    (TrainGroup("missing", ["d1"], []), "not in queries"),
    (TrainGroup("q", ["d1"], ["nope"]), "neither in the corpus"),
    (TrainGroup("q", ["d1"], ["d1x"], extra_passages={"d1": "dup"}), "ambiguous"),
])
def test_bad_ids_fail_at_construction(group, match):
    with pytest.raises(ValueError, match=match):
        TrainGroupDataset([group], {"q": Query("q", "x")}, {"d1": Passage("d1", "t")}, group_size=2)


@pytest.mark.parametrize("kw", [{"group_size": 0}, {"seed": -1}, {"negative_sampling": "hard"}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        TrainGroupDataset([], {}, {}, **kw)


def test_extra_per_group_lists_every_dark_example_next_to_sampled_negatives():
    from densekd.training.dataset import sample_group_ids

    extra = {"x1": "dark one", "x2": "dark two"}
    g = TrainGroup("q", ["p"], ["n1", "x1", "n2", "n3", "x2", "n4"], None, extra)
    for epoch in range(4):
        ids = sample_group_ids(g, 3, seed=5, epoch=epoch, idx=0, extra_per_group=2)
        assert len(ids) == 5 and ids[0] == "p"
        assert all(n.startswith("n") for n in ids[1:3])   # hard negatives only from the mined pool
        assert ids[3:] == ["x1", "x2"]                     # every dark example, stored order
        # the mined part is what the same group without dark examples would draw
        plain = TrainGroup("q", ["p"], ["n1", "n2", "n3", "n4"])
        assert ids[:3] == sample_group_ids(plain, 3, seed=5, epoch=epoch, idx=0)
    # fewer dark examples than slots: padded by repeats (masked by the collator); none: repeat the last id
    short = TrainGroup("q", ["p"], ["n1", "x1"], None, {"x1": "t"})
    assert sample_group_ids(short, 2, 0, 0, 0, extra_per_group=3) == ["p", "n1", "x1", "x1", "x1"]
    bare = TrainGroup("q", ["p"], ["n1"], None, {})
    assert sample_group_ids(bare, 2, 0, 0, 0, extra_per_group=2) == ["p", "n1", "n1", "n1"]
    # default: dark examples are ordinary members of the negative pool
    assert len(sample_group_ids(g, 3, seed=5, epoch=0, idx=0)) == 3
