"""Teachers: models that score each query's candidate list with raw logits for distillation.

See :mod:`densekd.teachers.base` for the one :class:`Teacher` contract (``score_candidates`` +
``fingerprint``), which the cross-encoder, ColBERT and reader teachers implement by composition over
their models, and :func:`rerank` for re-ranking a first-stage run with any of them.
"""

from __future__ import annotations

from densekd.teachers.base import (
    CandidateList,
    PairTeacher,
    Teacher,
    as_teacher,
    fingerprint_file,
    fingerprint_parts,
    fingerprint_state_dict,
)
from densekd.teachers.cross_encoder import CrossEncoderTeacher
from densekd.teachers.rerank import dot_scores, rerank

__all__ = [
    "CandidateList",
    "CrossEncoderTeacher",
    "PairTeacher",
    "Teacher",
    "as_teacher",
    "dot_scores",
    "fingerprint_file",
    "fingerprint_parts",
    "fingerprint_state_dict",
    "rerank",
]
