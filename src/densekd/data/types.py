"""Typed records that every densekd component exchanges.

Data contracts
--------------
* ``Passage(id, text, title)``: ``title`` may be empty. :meth:`Passage.full_text` is what encoders see
  (``"title. text"`` style join, title first when present).
* ``Query(id, text, answers)``: ``answers`` is ``None`` for IR sets and a list of answer strings for
  QA sets (squad-open, NQ); answer matching is done by :mod:`densekd.eval.qa`.
* ``Corpus``: ``dict[str, Passage]`` keyed by passage id, insertion-ordered (file order).
* ``Queries``: ``dict[str, Query]`` keyed by query id.
* ``Qrels``: ``dict[qid, dict[doc_id, int]]``; graded relevance, ``> 0`` means relevant.
* ``Run``: ``dict[qid, dict[doc_id, float]]``; higher score = more relevant. Rank is derived by sorting.
* ``TrainGroup``: one training query with positive ids, negative ids and optional teacher scores.
  ``teacher_scores`` maps doc id -> **raw teacher logit** (never a probability); losses apply their own
  softmax/temperature. Scores exist for every id in ``pos_ids + neg_ids`` or for none. A *label-free*
  group (``pos_ids == []``, every candidate in ``neg_ids``, teacher scores required) comes from a teacher
  that had no passage labels (the reader -> retriever loop): it carries no positive, fake or otherwise;
  only consumers that read no labels accept it (:class:`~densekd.training.dataset.TrainGroupDataset`
  with ``allow_label_free``, and losses that read only the teacher's scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


@dataclass(slots=True)
class Passage:
    """One corpus document."""

    id: str
    text: str
    title: str = ""

    def full_text(self, sep: str = ". ") -> str:
        """Title and text joined as the encoders consume them."""
        return f"{self.title}{sep}{self.text}" if self.title else self.text


@dataclass(slots=True)
class Query:
    """One query; ``answers`` is set for QA data sets."""

    id: str
    text: str
    answers: list[str] | None = None


Corpus = dict[str, Passage]
Queries = dict[str, Query]


@dataclass(slots=True)
class TrainGroup:
    """A training instance: a query, its positives, its candidate negatives and teacher scores.

    Attributes
    ----------
    qid
        Query id (text is looked up in a :data:`Queries` mapping at collation time).
    pos_ids, neg_ids
        Passage ids; positives first by convention.
    teacher_scores
        Optional ``doc_id -> raw logit`` for every id in ``pos_ids + neg_ids``.
    extra_passages
        Synthetic candidates that are not in the corpus (e.g. ADAM dark examples): ``id -> text``.
        Their ids may appear in ``neg_ids``.
    """

    qid: str
    pos_ids: list[str]
    neg_ids: list[str] = field(default_factory=list)
    teacher_scores: dict[str, float] | None = None
    extra_passages: dict[str, str] | None = None

    @property
    def labelled(self) -> bool:
        """``False`` for a label-free group (no positive; module docstring)."""
        return bool(self.pos_ids)

    def anchor_id(self) -> str:
        """Candidate 0 of every training item drawn from this group: its first positive, or in a label-free
        group the candidate the teacher scores highest (the first in stored order on ties). It is where a
        group's scores are read relative to (Margin-MSE), not a label."""
        if self.pos_ids:
            return self.pos_ids[0]
        scores = self.teacher_scores or {}
        return max(self.neg_ids, key=lambda pid: scores[pid])  # max keeps the first of equal scores

    def validate(self) -> None:
        """Raise ``ValueError`` when the record breaks its contract (checked by loaders)."""
        if not self.pos_ids and self.teacher_scores is None:
            raise ValueError(f"query {self.qid!r}: no positive passage (only a teacher-scored group may be label-free)")
        if not self.pos_ids and not self.neg_ids:
            raise ValueError(f"query {self.qid!r}: no candidate passage")
        if self.teacher_scores is not None:
            ids = self.pos_ids + self.neg_ids
            missing = [i for i in ids if i not in self.teacher_scores]
            if missing:
                raise ValueError(f"query {self.qid!r}: no teacher score for {missing[:3]}")
            bad = [i for i in ids if not math.isfinite(self.teacher_scores[i])]
            if bad:
                raise ValueError(f"query {self.qid!r}: non-finite teacher score for {bad[:3]}")

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (see :mod:`densekd.teachers.annotate` for the file format)."""
        row: dict[str, Any] = {"qid": self.qid, "pos_ids": self.pos_ids, "neg_ids": self.neg_ids}
        if self.teacher_scores is not None:
            row["teacher_scores"] = self.teacher_scores
        if self.extra_passages:
            row["extra_passages"] = self.extra_passages
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> TrainGroup:
        """Inverse of :meth:`to_json`; raises ``KeyError``/``TypeError``/``ValueError`` on bad rows."""
        scores = row.get("teacher_scores")
        group = cls(
            qid=str(row["qid"]),
            pos_ids=[str(x) for x in row["pos_ids"]],
            neg_ids=[str(x) for x in row.get("neg_ids", [])],
            teacher_scores=None if scores is None else {str(k): float(v) for k, v in scores.items()},
            extra_passages=row.get("extra_passages") or None,
        )
        group.validate()
        return group


def top_k(run_for_query: dict[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` highest-scoring ``(doc_id, score)`` pairs, ties broken by doc id for determinism.

    ``k < 0`` raises ``ValueError`` (as a slice it would silently drop the last ``|k|`` documents).

    Examples
    --------
    >>> top_k({"b": 1.0, "a": 1.0, "c": 2.0}, 2)
    [('c', 2.0), ('a', 1.0)]
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return sorted(run_for_query.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
