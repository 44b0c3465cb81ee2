"""The teacher contract and the fingerprint helpers that make teacher scores cacheable.

Contract
--------
A teacher is anything with

* ``score(pairs, batch_size, show_progress) -> np.float32[N]``: one **raw logit** per
  ``(query_text, passage_text)`` pair, in input order. Never probabilities: losses apply their own softmax and temperature, and a
  sigmoid would squash the top of the ranking that distillation cares most about.
* ``fingerprint: str``: a stable id of everything that changes the scores (weights, truncation
  length, tokenizer). Annotation caches are keyed by it, so equal fingerprints must mean equal scores
  and any change of weights or settings must change it.

Fingerprints are hex SHA-256 digests built with :func:`fingerprint_parts` from
:func:`fingerprint_file` (weights on disk) or :func:`fingerprint_state_dict` (weights in memory).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# the fingerprint helpers live with every other cache-key hash; re-exported here as the teacher API
from densekd.data.hashing import file_digest as fingerprint_file
from densekd.data.hashing import fingerprint_parts, fingerprint_state_dict

__all__ = ["Teacher", "fingerprint_file", "fingerprint_parts", "fingerprint_state_dict"]


@runtime_checkable
class Teacher(Protocol):
    """Scores ``(query, passage)`` text pairs with raw logits; see the module docstring."""

    @property
    def fingerprint(self) -> str:
        """Stable id of weights + settings (a cache key)."""
        ...

    def score(self, pairs: list[tuple[str, str]], batch_size: int = 64,
              show_progress: bool = False) -> np.ndarray:
        """Raw logits ``np.float32[N]`` for ``N`` pairs, in input order."""
        ...
