"""ColBERT as a teacher: a :class:`~densekd.teachers.base.Teacher` composed over a :class:`LateInteractionEncoder`.

Units
-----
Scores are exact **MaxSim** values (the sum over the query's real tokens of the best cosine over the
passage's kept tokens, in ``[-Lq, Lq]``): raw logits for the losses, as a ColBERT teacher's are in
ColBERT's own distillation. A candidate is read as ``Passage.full_text()`` (or the text itself).

Fingerprint
-----------
``sha256(kind, settings, tokenizer state, weights)`` where the settings are the
:class:`~densekd.encoders.late_interaction.LateInteractionConfig` fields that change scores
(dimension, punctuation skipping, lengths, prefixes; not where the model was loaded from); weights
(tower and projection) are hashed from memory and cached until a tensor changes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from densekd.data.types import Passage
from densekd.encoders.late_interaction import LateInteractionEncoder
from densekd.index.late_interaction import maxsim_ragged, stack_ragged
from densekd.teachers.base import Candidate, CandidateList, fingerprint_parts, fingerprint_state_dict
from densekd.teachers.model_fingerprint import CachedFingerprint, tokenizer_state

_FINGERPRINT_KIND = "densekd.LateInteractionTeacher/v1"
DEFAULT_BATCH_SIZE = 32


class LateInteractionTeacher:
    """Scores candidates by exact MaxSim with a ColBERT-style encoder (module docstring).

    Parameters
    ----------
    encoder
        The late-interaction encoder (shared, not copied); e.g.
        ``ErnieSearchModel.to_late_interaction_encoder()`` for an ERNIE-Search ColBERT head.

    Examples
    --------
    >>> teacher = LateInteractionTeacher.from_pretrained("path/to/colbert")                # doctest: +SKIP
    >>> teacher.score_candidates([CandidateList("what is aspirin", ["Aspirin is a drug."])])  # doctest: +SKIP
    [array([7.31], dtype=float32)]
    """

    def __init__(self, encoder: LateInteractionEncoder):
        self.encoder = encoder
        self._fingerprint = CachedFingerprint()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **overrides: Any) -> LateInteractionTeacher:
        """Load the encoder with :meth:`LateInteractionEncoder.from_pretrained` and wrap it."""
        return cls(LateInteractionEncoder.from_pretrained(path, **overrides))

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """MaxSim ``np.float32[k_i]`` per candidate list.

        Every distinct candidate (a corpus passage by id, a synthetic one by text) and every query is
        encoded once, ``batch_size`` texts per forward (default 32), however many lists share it.
        """
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        keys = [[_key(p) for p in item.passages] for item in lists]
        unique = dict(zip((k for row in keys for k in row), (p for item in lists for p in item.passages)))
        encoded = self.encoder.encode_passage_tokens(list(unique.values()), batch_size, show_progress)
        p_emb = dict(zip(unique, encoded))
        q_emb = self.encoder.encode_query_tokens([item.query for item in lists], batch_size)
        out = []
        for row, q in zip(keys, q_emb):
            tokens, offsets = stack_ragged([p_emb[k] for k in row])
            out.append(maxsim_ragged(q, tokens, offsets) if row else np.zeros(0, dtype=np.float32))
        return out

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of weights, score-relevant settings and tokenizer (see the module docstring)."""
        encoder = self.encoder
        settings = tuple((k, v) for k, v in sorted(dataclasses.asdict(encoder.config).items())
                         if k != "model_name_or_path")
        return self._fingerprint.get(encoder, settings, lambda state: fingerprint_parts(
            _FINGERPRINT_KIND, settings, tokenizer_state(encoder.tokenizer), fingerprint_state_dict(state)))


def _key(candidate: Candidate) -> tuple[str, str]:
    """Identity of a candidate for encoding it once: a corpus passage's id, else the text."""
    return ("id", candidate.id) if isinstance(candidate, Passage) else ("text", candidate)
