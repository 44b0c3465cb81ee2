"""Distillation and contrastive losses for dense retrievers.

Every loss is an ``nn.Module`` with ``forward(scores: ScoreBatch) -> dict[str, Tensor]`` of named
scalar components; the math lives in a pure tensor function next to it. Inputs are raw scores
(logits) for both student and teacher, never probabilities. See :mod:`densekd.losses.batch` for the
batch layout and :mod:`densekd.scores.distributed` for the DDP loss-scaling convention. The score
functions re-exported here live in :mod:`densekd.scores`.
"""

from __future__ import annotations

from densekd.losses.batch import ScoreBatch
from densekd.losses.combine import LOSS_REGISTRY, WeightedSum, build_loss
from densekd.losses.contrastive import InfoNCE, info_nce_loss
from densekd.losses.ernie import ErnieLossSettings, ErnieSearchLoss, ernie_search_loss
from densekd.losses.kl import KLDistillation, kl_distillation_loss
from densekd.losses.listwise import ListNet, RankNet, listnet_loss, ranknet_loss
from densekd.losses.margin_mse import MarginMSE, margin_mse_loss
from densekd.losses.margin_ranking import MarginRanking, margin_ranking_loss
from densekd.losses.mse import ScoreMSE, score_mse_loss
from densekd.scores import (
    InBatchScores,
    gather_with_grad,
    global_in_batch,
    group_scores,
    in_batch_scores,
    maxsim,
    maxsim_grouped,
)

__all__ = [
    "LOSS_REGISTRY",
    "ErnieLossSettings",
    "ErnieSearchLoss",
    "InBatchScores",
    "InfoNCE",
    "KLDistillation",
    "ListNet",
    "MarginMSE",
    "MarginRanking",
    "RankNet",
    "ScoreBatch",
    "ScoreMSE",
    "WeightedSum",
    "build_loss",
    "ernie_search_loss",
    "gather_with_grad",
    "global_in_batch",
    "group_scores",
    "in_batch_scores",
    "info_nce_loss",
    "kl_distillation_loss",
    "listnet_loss",
    "margin_mse_loss",
    "margin_ranking_loss",
    "maxsim",
    "maxsim_grouped",
    "ranknet_loss",
    "score_mse_loss",
]
