"""The cross-encoder teacher: a :class:`~densekd.teachers.base.Teacher` composed over a :class:`CrossEncoder`.

Units
-----
:meth:`CrossEncoderTeacher.score_candidates` and :meth:`CrossEncoderTeacher.score` return **raw
logits** of the one-unit classification head (unbounded floats, higher = more relevant), never
sigmoid probabilities; a candidate is read as ``(query, Passage.full_text())``.

Fingerprint
-----------
``sha256(kind, max_length, tokenizer state, weights)``: the weights are hashed from memory (so a
model fine-tuned or edited in place gets a new fingerprint even before it is saved) and the result
is cached until a weight tensor or ``max_length`` changes
(:class:`~densekd.teachers.model_fingerprint.CachedFingerprint`). It keys the annotation caches,
so it must stay byte-for-byte what it was (``tests/teachers/test_teacher_fingerprints.py`` pins it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from densekd.encoders.cross_encoder import CrossEncoder
from densekd.teachers.base import CandidateList, fingerprint_parts, fingerprint_state_dict, score_as_pairs
from densekd.teachers.model_fingerprint import CachedFingerprint, tokenizer_state

_FINGERPRINT_KIND = "densekd.CrossEncoderTeacher/v1"


class CrossEncoderTeacher:
    """Scores candidates with a :class:`~densekd.encoders.cross_encoder.CrossEncoder` (module docstring).

    Parameters
    ----------
    encoder
        The cross-encoder; the teacher shares it (no copy), so training it changes the teacher's
        scores and fingerprint.

    Examples
    --------
    >>> teacher = CrossEncoderTeacher.from_pretrained("path/to/reranker")                  # doctest: +SKIP
    >>> teacher.score_candidates([CandidateList("what is aspirin", ["Aspirin is a drug."])])  # doctest: +SKIP
    [array([6.93], dtype=float32)]
    """

    def __init__(self, encoder: CrossEncoder):
        self.encoder = encoder
        self._fingerprint = CachedFingerprint()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None,
                        max_length: int | None = None) -> CrossEncoderTeacher:
        """Load the cross-encoder with :meth:`CrossEncoder.from_pretrained` and wrap it."""
        return cls(CrossEncoder.from_pretrained(path, max_length=max_length))

    @classmethod
    def from_encoder(cls, encoder: CrossEncoder) -> CrossEncoderTeacher:
        """Wrap an in-memory cross-encoder (e.g. the output of ``train_cross_encoder``); same as the constructor."""
        return cls(encoder)

    def score(self, pairs: list[tuple[str, str]], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Raw logits ``np.float32[N]`` for ``N`` ``(query, passage text)`` pairs, in input order."""
        return self.encoder.predict(pairs, batch_size=batch_size, show_progress=show_progress)

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """Raw logits per candidate list; every pair of ``lists`` goes through one :meth:`CrossEncoder.predict`
        call, which length-sorts across queries (``batch_size`` pairs per forward, default 64)."""
        return score_as_pairs(self.score, lists, batch_size, show_progress)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of weights, ``max_length`` and tokenizer (see the module docstring)."""
        encoder = self.encoder
        return self._fingerprint.get(encoder.model, (encoder.max_length,), lambda state: fingerprint_parts(
            _FINGERPRINT_KIND, encoder.max_length, tokenizer_state(encoder.tokenizer), fingerprint_state_dict(state)))
