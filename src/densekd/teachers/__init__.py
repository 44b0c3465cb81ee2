"""Teachers: models that score ``(query, passage)`` pairs with raw logits for distillation.

See :mod:`densekd.teachers.base` for the :class:`Teacher` contract (``score`` + ``fingerprint``).
"""

from __future__ import annotations

from densekd.teachers.base import Teacher, fingerprint_file, fingerprint_parts, fingerprint_state_dict
from densekd.teachers.cross_encoder import CrossEncoderTeacher, rerank

__all__ = [
    "CrossEncoderTeacher",
    "Teacher",
    "fingerprint_file",
    "fingerprint_parts",
    "fingerprint_state_dict",
    "rerank",
]
