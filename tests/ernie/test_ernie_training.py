"""DistillTrainer with the ERNIE-Search model: learning on the toy set, logging, saving, head checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densekd.encoders.dense import DenseEncoder
from densekd.encoders.ernie import ErnieSearchModel
from densekd.training import DistillConfig, DistillTrainer, TrainGroupDataset

ERNIE_LOSS = {"ernie": {"ce_to_dense_weight": 0.5}}


def _trainer(model, data, groups, out: Path, **config) -> DistillTrainer:
    config = {"output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
              "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "group_size": 4,
              "loss": ERNIE_LOSS, **config}
    args = DistillConfig(**config)
    ds = TrainGroupDataset(groups, data.queries, data.corpus, group_size=args.group_size, seed=args.seed)
    return DistillTrainer(model, args, train_dataset=ds)


def _fixed_loss(trainer: DistillTrainer, data, groups) -> float:
    ds = TrainGroupDataset(groups, data.queries, data.corpus, group_size=4, negative_sampling="top")
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_ernie_distill_trainer_reduces_the_loss_and_saves_a_dense_retriever(ernie_model, toy_train, toy_groups,
                                                                            tmp_path):
    trainer = _trainer(ernie_model, toy_train, toy_groups, tmp_path)
    head_before = ernie_model.colbert_head.linear.weight.detach().clone()
    before = _fixed_loss(trainer, toy_train, toy_groups)
    trainer.train()
    assert _fixed_loss(trainer, toy_train, toy_groups) < before
    assert not torch.equal(head_before, ernie_model.colbert_head.linear.weight)  # the ColBERT head trained too
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(steps) == 6
    parts = ["contrastive_dense", "contrastive_colbert", "kl_colbert_to_dense", "kl_ce_to_colbert", "kl_ce_to_dense"]
    for record in steps:
        assert record["loss"] == pytest.approx(sum(record[f"loss_ernie/{p}"] for p in parts), abs=1e-3)

    trainer.save_model(tmp_path / "final")
    dense = DenseEncoder.from_pretrained(tmp_path / "final")
    texts = [p.full_text() for p in toy_train.corpus.values()]
    np.testing.assert_allclose(dense.encode_passages(texts, show_progress=False),
                               ernie_model.encode_passages(texts, show_progress=False), atol=1e-6)
    # resuming goes through the model's own loader (strict: the ColBERT head must be there too)
    fresh = ErnieSearchModel.from_pretrained(tmp_path / "final")
    with torch.no_grad():
        fresh.colbert_head.linear.weight.zero_()
    _trainer(fresh, toy_train, toy_groups, tmp_path / "r")._load_from_checkpoint(str(tmp_path / "final"))
    torch.testing.assert_close(fresh.colbert_head.linear.weight, ernie_model.colbert_head.linear.weight)


def test_ernie_trainer_without_in_batch_negatives_and_without_teacher(ernie_model, toy_train, toy_groups,
                                                                      tmp_path):
    from densekd.data.types import TrainGroup

    bare = [TrainGroup(g.qid, g.pos_ids, g.neg_ids) for g in toy_groups]
    sod_only = {"ernie": {"ce_to_colbert_weight": 0.0, "dense_contrastive_weight": 1.0,
                          "colbert_contrastive_weight": 1.0}}
    trainer = _trainer(ernie_model, toy_train, bare, tmp_path, loss=sod_only, max_steps=2,
                       use_in_batch_negatives=False)
    trainer.train()
    assert "loss_ernie/kl_colbert_to_dense" in trainer.state.log_history[0]


def test_ernie_head_requirements_are_checked_before_training(tiny_bert_path, ernie_model, toy_train, toy_groups,
                                                             tmp_path):
    with pytest.raises(ValueError, match="needs score heads \\['colbert'\\]"):
        _trainer(DenseEncoder.from_pretrained(tiny_bert_path), toy_train, toy_groups, tmp_path)
    with pytest.raises(ValueError, match="query_only' needs passage_embeddings"):
        _trainer(ernie_model, toy_train, toy_groups, tmp_path, train_mode="query_only")
