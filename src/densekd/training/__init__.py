"""Distillation training: config, dataset, collator, trainer and callbacks (see ARCHITECTURE.md).

Flow: ``TrainGroup`` records -> :class:`TrainGroupDataset` (seeded per (seed, epoch, idx) sampling of
1 positive + G-1 negatives, texts looked up lazily) -> :class:`DistillCollator` (tokenised queries,
group-major passages, teacher scores, repeat mask) -> :class:`DistillTrainer` (HF ``Trainer`` with a
distillation ``compute_loss``; saves :class:`~densekd.encoders.dense.DenseEncoder` folders).
:class:`SelfPacedDataset` optionally restricts (or weights) each epoch to the instances the teacher
is most confident about (ADAM's self-paced distillation).
"""

from __future__ import annotations

from densekd.training.callbacks import EpochSetterCallback, RetrievalEvalCallback
from densekd.training.collator import DistillCollator, TextTokenizer, repeat_mask
from densekd.training.config import DistillConfig, default_loss_spec
from densekd.training.dataset import TrainGroupDataset, sample_group_ids
from densekd.training.self_paced import SelfPacedConfig, SelfPacedDataset, SelfPacedLogCallback, SelfPacedSelector
from densekd.training.trainer import DistillTrainer, PassageEmbeddingTable, freeze_passage_side

__all__ = [
    "DistillCollator",
    "DistillConfig",
    "DistillTrainer",
    "EpochSetterCallback",
    "PassageEmbeddingTable",
    "RetrievalEvalCallback",
    "SelfPacedConfig",
    "SelfPacedDataset",
    "SelfPacedLogCallback",
    "SelfPacedSelector",
    "TextTokenizer",
    "TrainGroupDataset",
    "default_loss_spec",
    "freeze_passage_side",
    "repeat_mask",
    "sample_group_ids",
]
