"""Fixtures for the ERNIE-Search / late-interaction tests: toy data, annotated groups, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from densekd.data.beir import load_beir
from densekd.data.types import TrainGroup


@pytest.fixture(scope="session")
def ernie_toy(toy_beir_dir: Path):
    """``BeirData`` of the toy set (train split): 8 passages, 5 queries."""
    return load_beir(toy_beir_dir, "train")


@pytest.fixture(scope="session")
def ernie_groups(ernie_toy) -> list[TrainGroup]:
    """One group per query: relevant docs positive, every other doc negative, distinct teacher logits."""
    groups = []
    for qid, rels in ernie_toy.qrels.items():
        pos = [pid for pid, rel in rels.items() if rel > 0]
        neg = [pid for pid in ernie_toy.corpus if pid not in pos]
        groups.append(TrainGroup(qid, pos, neg, teacher_scores={pid: 8.0 for pid in pos}
                                 | {pid: float(i) for i, pid in enumerate(neg)}))
    return groups


@pytest.fixture
def ernie_model(tiny_bert_path):
    """A fresh ErnieSearchModel on the tiny BERT with a seeded 16-d ColBERT head, in eval mode."""
    import torch

    from densekd.encoders.ernie import ErnieSearchModel

    torch.manual_seed(0)
    return ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16).eval()


@pytest.fixture
def colbert(tiny_bert_path):
    """A fresh LateInteractionEncoder on the tiny BERT with a seeded 16-d head, in eval mode."""
    import torch

    from densekd.encoders.late_interaction import LateInteractionEncoder

    torch.manual_seed(0)
    return LateInteractionEncoder.from_pretrained(tiny_bert_path, dim=16).eval()
