"""Hard-negative mining from retrieval runs (:mod:`.negatives`)."""

from __future__ import annotations

from densekd.mining.negatives import MiningStats, mine_negatives, mine_negatives_with_stats

__all__ = ["MiningStats", "mine_negatives", "mine_negatives_with_stats"]
