"""DistillCollator: shapes, group-major order, teacher scores, repeat mask, query_only batches."""

from __future__ import annotations

import pickle

import pytest
import torch

from densekd.encoders.dense import DenseEncoder
from densekd.training.collator import DistillCollator, TextTokenizer
from densekd.training.dataset import TrainGroupDataset


def _items(toy_data, toy_groups, group_size=3):
    ds = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, group_size=group_size)
    return [ds[i] for i in range(3)]


def test_shapes_and_dtypes(tiny_bert_path, toy_data, toy_groups):
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    items = _items(toy_data, toy_groups)
    batch = DistillCollator.from_encoder(enc)(items)
    assert batch["query"]["input_ids"].shape[0] == 3
    assert batch["passage"]["input_ids"].shape[0] == 3 * 3
    assert batch["passage"]["attention_mask"].shape == batch["passage"]["input_ids"].shape
    assert batch["teacher_scores"].shape == (3, 3) and batch["teacher_scores"].dtype == torch.float32
    assert batch["teacher_scores"].tolist() == [item["teacher_scores"] for item in items]
    assert batch["mask"].dtype == torch.bool and batch["mask"].all()
    assert batch["pids"] == [item["pids"] for item in items]


def test_passages_are_group_major():
    seen = {}

    def record(name):
        def tokenize(texts):
            seen[name] = list(texts)
            return {"input_ids": torch.zeros(len(texts), 1, dtype=torch.long)}
        return tokenize

    items = [{"query": f"q{i}", "pids": [f"p{i}{j}" for j in range(2)],
              "passages": [f"t{i}{j}" for j in range(2)], "teacher_scores": None} for i in range(2)]
    batch = DistillCollator(record("q"), record("p"))(items)
    assert seen == {"q": ["q0", "q1"], "p": ["t00", "t01", "t10", "t11"]}
    assert batch["teacher_scores"] is None


def test_query_only_batches_have_no_passage_tokens(tiny_bert_path, toy_data, toy_groups):
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    batch = DistillCollator.from_encoder(enc, query_only=True)(_items(toy_data, toy_groups))
    assert batch["passage"] is None and batch["query"]["input_ids"].shape[0] == 3


def test_repeats_are_masked():
    items = [{"query": "q", "pids": ["p", "n", "n", "p"], "passages": ["a"] * 4, "teacher_scores": None}]
    batch = DistillCollator(lambda t: {}, None)(items)
    assert batch["mask"].tolist() == [[True, True, False, False]]


def test_dark_examples_are_marked_unlabelled_only_when_present():
    plain = [{"query": "q", "pids": ["p", "n"], "passages": ["a"] * 2, "teacher_scores": None}]
    assert "label_mask" not in DistillCollator(lambda t: {}, None)(plain)  # old batches keep their keys
    dark = [{"query": "q", "pids": ["p", "n", "dark:mask:q:0", "dark:mix:q:0"], "passages": ["a"] * 4,
             "teacher_scores": None}]
    assert DistillCollator(lambda t: {}, None)(dark)["label_mask"].tolist() == [[True, True, False, False]]


def test_mixed_teacher_scores_and_group_sizes_are_errors():
    item = {"query": "q", "pids": ["p", "n"], "passages": ["a", "b"], "teacher_scores": [1.0, 0.0]}
    collate = DistillCollator(lambda t: {}, None)
    with pytest.raises(ValueError, match="no teacher scores"):
        collate([item, {**item, "teacher_scores": None}])
    with pytest.raises(ValueError, match="same group size"):
        collate([item, {**item, "pids": ["p"], "passages": ["a"], "teacher_scores": [1.0]}])


def test_text_tokenizer_matches_encoder_and_pickles(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path, passage_prefix="passage: ", passage_max_length=8)
    tok = TextTokenizer(enc.tokenizer, 8, "passage: ")
    texts = ["a short one", "a much longer passage that will be truncated at eight tokens"]
    ours, theirs = pickle.loads(pickle.dumps(tok))(texts), enc.tokenize_passages(texts)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
