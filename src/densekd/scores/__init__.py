"""Score functions, the bottom layer every other package builds on (pylate keeps them in ``scores/``).

Pure functions of tensors or arrays: dot-product group and in-batch scores (:mod:`.dense`), the DDP
gather behind global in-batch negatives (:mod:`.distributed`), ColBERT MaxSim for padded torch batches
and ragged numpy stores (:mod:`.maxsim`), and per-query z-score normalisation (:mod:`.normalize`).
Every score is raw (a logit before any temperature or softmax). Imports only :mod:`densekd.data`.
"""

from __future__ import annotations

from densekd.scores.dense import group_scores, in_batch_scores
from densekd.scores.distributed import InBatchScores, gather_with_grad, global_in_batch, world_size
from densekd.scores.maxsim import maxsim, maxsim_grouped, maxsim_ragged, stack_ragged
from densekd.scores.normalize import zscore

__all__ = [
    "InBatchScores",
    "gather_with_grad",
    "global_in_batch",
    "group_scores",
    "in_batch_scores",
    "maxsim",
    "maxsim_grouped",
    "maxsim_ragged",
    "stack_ragged",
    "world_size",
    "zscore",
]
