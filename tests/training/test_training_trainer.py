"""DistillTrainer on the toy set with a tiny BERT: learning, saving, query_only, resume, accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from densekd.encoders.dense import DenseEncoder
from densekd.training import DistillCollator, DistillConfig, DistillTrainer, PassageEmbeddingTable, TrainGroupDataset


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def fixed_batch_loss(trainer: DistillTrainer, toy_data, toy_groups) -> float:
    ds = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, group_size=4, negative_sampling="top")
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_trains_logs_components_and_saves_a_loadable_encoder(make_trainer, tiny_bert_path, toy_data, toy_groups,
                                                             tmp_path):
    trainer = make_trainer(tiny_bert_path, tmp_path)
    before, loss_before = snapshot(trainer.model), fixed_batch_loss(trainer, toy_data, toy_groups)
    trainer.train()
    assert fixed_batch_loss(trainer, toy_data, toy_groups) < loss_before
    assert not same_weights(before, snapshot(trainer.model))
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(steps) == 5
    for record in steps:  # the components are the weighted terms of the logged total
        assert {"loss_kl", "loss_contrastive"} <= record.keys()
        assert record["loss"] == pytest.approx(record["loss_kl"] + record["loss_contrastive"], abs=1e-3)
    assert trainer.train_dataset.epoch == 2  # steps 5 = epoch 2 (2 steps per epoch): set_epoch reached it

    trainer.save_model(tmp_path / "final")
    files = {p.name for p in (tmp_path / "final").iterdir()}
    assert {"densekd_encoder.json", "model.safetensors", "training_args.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickles
    reloaded = DenseEncoder.from_pretrained(tmp_path / "final")
    texts = [p.full_text() for p in toy_data.corpus.values()]
    np.testing.assert_allclose(reloaded.encode_passages(texts, show_progress=False),
                               trainer.model.encode_passages(texts, show_progress=False), atol=1e-6)


def test_query_only_freezes_the_passage_tower_and_never_runs_it(tiny_bert_path, toy_data, toy_groups, tmp_path):
    encoder = DenseEncoder.from_pretrained(tiny_bert_path)
    texts = {pid: p.full_text() for pid, p in toy_data.corpus.items()}
    table = PassageEmbeddingTable.from_encoder(encoder, texts)
    args = DistillConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
                         use_cpu=True, disable_tqdm=True, group_size=4, train_mode="query_only", save_strategy="no")
    ds = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, group_size=4)
    trainer = DistillTrainer(encoder, args, train_dataset=ds, passage_embeddings=table)
    assert encoder.passage_model is not encoder.query_model  # untied before freezing
    query_before, passage_before = snapshot(encoder.query_model), snapshot(encoder.passage_model)

    def no_passage_forward(*_):
        raise AssertionError("query_only training ran the passage tower")
    hook = encoder.passage_model.register_forward_pre_hook(no_passage_forward)
    trainer.train()
    hook.remove()
    assert same_weights(passage_before, snapshot(encoder.passage_model))
    assert not same_weights(query_before, snapshot(encoder.query_model))
    np.testing.assert_allclose(encoder.encode_passages(list(texts.values()), show_progress=False),
                               table.embeddings, atol=1e-6)
    with pytest.raises(ValueError, match="tokenize_passage=None"):
        DistillTrainer(encoder, args, train_dataset=ds, passage_embeddings=table,
                       data_collator=DistillCollator.from_encoder(encoder))


def test_query_only_needs_a_table_of_the_right_size(tiny_bert_path, tmp_path):
    encoder = DenseEncoder.from_pretrained(tiny_bert_path)
    args = DistillConfig(output_dir=str(tmp_path), use_cpu=True, train_mode="query_only")
    with pytest.raises(ValueError, match="needs passage_embeddings"):
        DistillTrainer(encoder, args)
    with pytest.raises(ValueError, match="dim"):
        DistillTrainer(encoder, args, passage_embeddings=(["d1"], np.zeros((1, 3), np.float32)))
    table = PassageEmbeddingTable(["d1"], np.zeros((1, encoder.dim), np.float32))
    with pytest.raises(KeyError, match="not in the query_only embedding table"):
        table.lookup(["d2"], torch.device("cpu"), torch.float32)


class StopAt(TrainerCallback):
    """Simulates an interrupted run: stop after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_matches_an_uninterrupted_run(make_trainer, tiny_bert_path, tmp_path):
    # 2 steps per epoch: the interruption after step 3 is mid-epoch 1 (batch skipping, set_epoch(1))
    straight = make_trainer(tiny_bert_path, tmp_path / "a", max_steps=4)
    straight.train()
    interrupted = make_trainer(tiny_bert_path, tmp_path / "b", max_steps=4,
                               save_strategy="steps", save_steps=3, trainer_kw={"callbacks": [StopAt(3)]})
    interrupted.train()
    checkpoint = tmp_path / "b" / "checkpoint-3"
    assert (checkpoint / "densekd_encoder.json").is_file()
    assert not same_weights(snapshot(straight.model), snapshot(interrupted.model), atol=1e-6)
    resumed = make_trainer(tiny_bert_path, tmp_path / "b", max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4 and resumed.train_dataset.epoch == 1
    assert same_weights(snapshot(straight.model), snapshot(resumed.model), atol=1e-6)


def test_gradient_accumulation_matches_the_larger_batch(make_trainer, no_dropout_bert_path, tmp_path):
    # In-batch negatives are off: with them a micro-batch of 2 sees 2*G negatives instead of 4*G, so
    # 2x2 accumulation is a different objective than one batch of 4 (see the trainer module docstring).
    # SGD, not Adam: Adam's first step is ~sign(grad), which turns rounding noise on near-zero
    # gradient entries into lr-sized differences.
    common = {"max_steps": 2, "use_in_batch_negatives": False, "optim": "sgd", "learning_rate": 0.5,
              "max_grad_norm": 0.0}
    big = make_trainer(no_dropout_bert_path, tmp_path / "big",
                       per_device_train_batch_size=4, **common)
    start = snapshot(big.model)
    big.train()
    accumulated = make_trainer(no_dropout_bert_path, tmp_path / "acc",
                               per_device_train_batch_size=2, gradient_accumulation_steps=2, **common)
    accumulated.train()
    assert not same_weights(start, snapshot(big.model), atol=1e-4)  # the comparison is not vacuous
    assert same_weights(snapshot(big.model), snapshot(accumulated.model), atol=1e-5)


def test_in_batch_copies_of_a_querys_positives_are_excluded_from_its_negatives(make_trainer, tiny_bert_path,
                                                                                 tmp_path):
    """Toy groups list every other document as a negative, so each query's positive is also in other
    queries' groups: exactly those columns (and no own-group column) are excluded for it."""
    trainer = make_trainer(tiny_bert_path, tmp_path)
    ds = trainer.train_dataset
    inputs = trainer.data_collator([ds.item(i) for i in range(4)])
    b, g = len(inputs["pids"]), len(inputs["pids"][0])
    columns = [pid for group in inputs["pids"] for pid in group]
    expected = [[columns[c] in ds.groups[i].pos_ids and c // g != i for c in range(b * g)] for i in range(b)]
    scores = trainer._score_batch(torch.randn(b, 8), torch.randn(b * g, 8), inputs)
    assert scores.in_batch_exclude.tolist() == expected
    assert any(any(row) for row in expected)  # the toy batch does hold such copies


@pytest.mark.parametrize("field,dataset_value", [("group_size", 3), ("negative_sampling", "top")])
def test_a_dataset_that_samples_otherwise_than_the_config_is_refused(tiny_bert_path, toy_data, toy_groups, tmp_path,
                                                                     field, dataset_value):
    """The dataset draws the groups: a config whose group_size or negative_sampling says otherwise would be
    read nowhere, so the trainer refuses the pair instead of training silently on the dataset's."""
    args = DistillConfig(output_dir=str(tmp_path), use_cpu=True, group_size=4, negative_sampling="random")
    sampling = {"group_size": 4, "negative_sampling": "random", field: dataset_value}
    ds = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, **sampling)
    with pytest.raises(ValueError, match=f"train_dataset.{field}="):
        DistillTrainer(DenseEncoder.from_pretrained(tiny_bert_path), args, train_dataset=ds)
    same = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, group_size=4, negative_sampling="random")
    DistillTrainer(DenseEncoder.from_pretrained(tiny_bert_path), args, train_dataset=same)  # the config's: accepted
