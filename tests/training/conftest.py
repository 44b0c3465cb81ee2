"""Fixtures for the training tests: toy train groups with teacher scores, a dropout-free tiny BERT."""

from __future__ import annotations

from pathlib import Path

import pytest

from densekd.data.beir import load_beir
from densekd.data.types import TrainGroup


@pytest.fixture(scope="session")
def toy_data(toy_beir_dir: Path):
    """``BeirData`` of the toy set (train split): 8 passages, 5 queries."""
    return load_beir(toy_beir_dir, "train")


@pytest.fixture(scope="session")
def toy_groups(toy_data) -> list[TrainGroup]:
    """One group per query: relevant docs as positives, every other doc as a negative, teacher logits
    that rank the positive first and the negatives by a fixed, distinct score."""
    groups = []
    for qid, rels in toy_data.qrels.items():
        pos = [pid for pid, rel in rels.items() if rel > 0]
        neg = [pid for pid in toy_data.corpus if pid not in pos]
        scores = {pid: 8.0 for pid in pos} | {pid: float(i) for i, pid in enumerate(neg)}
        groups.append(TrainGroup(qid, pos, neg, teacher_scores=scores))
    return groups


@pytest.fixture(scope="session")
def no_dropout_bert_path(tmp_path_factory, tiny_bert_path) -> str:
    """The tiny BERT with dropout off: runs that must match step for step (gradient accumulation)
    would otherwise draw different dropout masks for different micro-batch layouts."""
    from transformers import AutoTokenizer, BertModel

    out = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    model = BertModel.from_pretrained(tiny_bert_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_path).save_pretrained(out)
    return str(out)


@pytest.fixture
def make_trainer(toy_data, toy_groups):
    """``make_trainer(model_path, out_dir, trainer_kw=None, **config) -> DistillTrainer`` on the toy
    groups: 5 groups, batch 2 with drop_last = 2 optimizer steps per epoch; CPU, logs every step."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.training import DistillConfig, DistillTrainer, TrainGroupDataset

    def make(model_path: str, out: Path, trainer_kw: dict | None = None, **config) -> DistillTrainer:
        config = {"output_dir": str(out), "max_steps": 5, "per_device_train_batch_size": 2,
                  "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "use_cpu": True,
                  "disable_tqdm": True, "group_size": 4, **config}
        args = DistillConfig(**config)
        ds = TrainGroupDataset(toy_groups, toy_data.queries, toy_data.corpus, group_size=args.group_size,
                               seed=args.seed, negative_sampling=args.negative_sampling)
        encoder = DenseEncoder.from_pretrained(model_path)
        return DistillTrainer(encoder, args, train_dataset=ds, **(trainer_kw or {}))

    return make
