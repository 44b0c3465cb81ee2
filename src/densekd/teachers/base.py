"""The one teacher contract, and the fingerprint helpers that make teacher scores cacheable.

Contract
--------
A teacher scores each query's **candidate list** and has a fingerprint:

* ``score_candidates(lists, batch_size=None, show_progress=False) -> list[np.float32[k_i]]``: one
  **raw logit** per candidate of each :class:`CandidateList`, in input order. Never probabilities:
  losses apply their own softmax and temperature, and a sigmoid would squash the top of the ranking
  that distillation cares most about. A list carries the query text, its candidates (corpus
  :class:`~densekd.data.types.Passage` records, or texts for synthetic passages) and, for teachers
  that condition on it (a reader), an answer. Lists are handed over together so a teacher can batch
  across queries (the cross-encoder length-sorts all pairs; ColBERT encodes each passage once);
  ``batch_size=None`` is the teacher's own default.
* ``fingerprint: str``: a stable id of everything that changes the scores (weights, truncation
  length, tokenizer, scoring settings). Annotation caches are keyed by it, so equal fingerprints must
  mean equal scores and any change of weights or settings must change it.

Implementations, each composed over its model: :class:`~densekd.teachers.cross_encoder.CrossEncoderTeacher`,
:class:`~densekd.teachers.late_interaction.LateInteractionTeacher` (ColBERT),
:class:`~densekd.teachers.fid.FiDTeacher` (reader). The one re-ranking loop over a first-stage run is
:func:`densekd.teachers.rerank.rerank`; the offline annotator is :func:`densekd.teachers.annotate.annotate`.
A scorer of independent ``(query, passage)`` pairs (``score(pairs) -> np.float32[N]`` + ``fingerprint``)
becomes a teacher through :func:`as_teacher`.

Fingerprints are hex SHA-256 digests built with :func:`fingerprint_parts` from
:func:`fingerprint_file` (weights on disk) or :func:`fingerprint_state_dict` (weights in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

# the fingerprint helpers live with every other cache-key hash; re-exported here as the teacher API
from densekd.data.hashing import file_digest as fingerprint_file
from densekd.data.hashing import fingerprint_parts, fingerprint_state_dict

from densekd.data.types import Passage

__all__ = ["CandidateList", "PairTeacher", "Teacher", "as_teacher", "candidate_text", "fingerprint_file",
           "fingerprint_parts", "fingerprint_state_dict", "score_as_pairs"]


#: A candidate: a corpus passage (scored as its title and text) or a bare text (a synthetic passage).
Candidate = Passage | str


class CandidateList(NamedTuple):
    """One query's candidates to score (module docstring)."""

    query: str
    passages: Sequence[Candidate]
    answer: str | None = None


def candidate_text(candidate: Candidate) -> str:
    """The text a pair-reading teacher scores: ``Passage.full_text()`` (title and text), or the text itself."""
    return candidate.full_text() if isinstance(candidate, Passage) else candidate


@runtime_checkable
class Teacher(Protocol):
    """Scores each query's candidate list with raw logits and has a fingerprint; see the module docstring."""

    @property
    def fingerprint(self) -> str:
        """Stable id of weights + settings (a cache key)."""
        ...

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """Raw logits ``np.float32[len(lists[i].passages)]`` per list, in input order."""
        ...


def score_as_pairs(score_pairs: Callable[..., np.ndarray], lists: Sequence[CandidateList],
                   batch_size: int | None, show_progress: bool,
                   as_input: Callable[[Candidate], Any] = candidate_text) -> list[np.ndarray]:
    """Score every ``(query, candidate)`` pair of ``lists`` in one call, then split per list.

    One call for all lists: a cross-encoder then length-sorts across queries, and the pairs (hence
    the scores) are exactly those of scoring the flattened lists directly. ``as_input`` turns a
    candidate into what ``score_pairs`` reads (default: its text; a reader that keeps titles apart
    takes the candidate itself).
    """
    pairs = [(item.query, as_input(p)) for item in lists for p in item.passages]
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    raw = np.asarray(score_pairs(pairs, show_progress=show_progress, **kwargs))
    if raw.shape != (len(pairs),):
        raise ValueError(f"teacher returned shape {raw.shape} for {len(pairs)} pairs")
    bounds = np.cumsum([0] + [len(item.passages) for item in lists])
    return [raw[start:end] for start, end in pairwise(bounds)]


class PairTeacher:
    """:class:`Teacher` over a scorer of independent pairs (``score(pairs, batch_size, show_progress)``).

    Parameters
    ----------
    scorer
        Has ``score(pairs: list[tuple[str, str]], batch_size=..., show_progress=...) -> np.float32[N]``
        raw logits and a ``fingerprint`` string.
    """

    def __init__(self, scorer: Any):
        self.scorer = scorer

    @property
    def fingerprint(self) -> str:
        """The scorer's fingerprint."""
        return self.scorer.fingerprint

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """All pairs of ``lists`` in one ``scorer.score`` call (:func:`score_as_pairs`)."""
        return score_as_pairs(self.scorer.score, lists, batch_size, show_progress)


def as_teacher(teacher: Any) -> Teacher:
    """``teacher`` itself when it has ``score_candidates``; a pair scorer wrapped in :class:`PairTeacher`."""
    if callable(getattr(teacher, "score_candidates", None)):
        return teacher
    if callable(getattr(teacher, "score", None)) and hasattr(teacher, "fingerprint"):
        return PairTeacher(teacher)
    raise TypeError(f"{type(teacher).__name__} is not a teacher: it needs score_candidates(lists) (or "
                    "score(pairs)) and a fingerprint")
