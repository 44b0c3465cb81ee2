"""Candidate construction for training: hard-negative mining (:mod:`.negatives`) and ADAM dark
examples (:mod:`.dark_examples`)."""

from __future__ import annotations

from densekd.mining.dark_examples import (
    DarkExampleConfig,
    DarkExampleStats,
    add_dark_examples,
    add_dark_examples_with_stats,
    mask_tokens,
    mix_tokens,
)
from densekd.mining.negatives import MiningStats, mine_negatives, mine_negatives_with_stats

__all__ = [
    "DarkExampleConfig",
    "DarkExampleStats",
    "MiningStats",
    "add_dark_examples",
    "add_dark_examples_with_stats",
    "mask_tokens",
    "mine_negatives",
    "mine_negatives_with_stats",
    "mix_tokens",
]
