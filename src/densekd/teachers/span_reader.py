"""Extractive pointer reader as a teacher: a passage's relevance is the pointer mass it receives.

A :class:`~densekd.encoders.span_reader.SpanReader` normalises its start logits over all the passages
of a question (shared normalisation), so ``logsumexp`` of a passage's start logits is a raw logit whose
softmax over any candidate list is the reader's distribution over those passages: the normaliser
cancels, each passage can be read alone, and the teacher is a plain pair scorer (any list length,
batched across queries). See :func:`~densekd.encoders.span_reader.passage_scores` for ``"mass"`` and
``"span"``.

Contract: :class:`~densekd.teachers.base.Teacher` (``score_candidates`` -> ``np.float32[k_i]`` raw
logits; ``fingerprint`` covers the weights, tokenizer and every setting that changes a score). The
answer of a :class:`~densekd.teachers.base.CandidateList` is not used: the pointer's mass needs none,
so the gold answer never leaks into the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from densekd.encoders.span_inputs import PassageLike
from densekd.encoders.span_reader import (
    SCORINGS,
    SpanReader,
    best_spans,
    passage_scores,
    span_matrix,
)
from densekd.teachers.base import (
    CandidateList,
    fingerprint_parts,
    fingerprint_state_dict,
    score_as_pairs,
)
from densekd.teachers.model_fingerprint import CachedFingerprint, tokenizer_state


class SpanReaderTeacher:
    """Scores each ``(question, passage)`` pair by the pointer reader's mass (module docstring).

    Parameters
    ----------
    reader
        A trained :class:`SpanReader` (put in eval mode while scoring).
    scoring
        ``"mass"`` (logsumexp of start logits), ``"span"`` (best span's start + end logit) or ``"select"``
        (the passage-selection logit).
    batch_size
        Pairs per forward.
    """

    def __init__(self, reader: SpanReader, scoring: str = "mass", batch_size: int = 32):
        if scoring not in SCORINGS:
            raise ValueError(f"span reader scoring must be one of {SCORINGS}, got {scoring!r}")
        self.reader, self.scoring, self.batch_size = reader, scoring, int(batch_size)
        self._fingerprint = CachedFingerprint()

    @property
    def fingerprint(self) -> str:
        """Weights, tokenizer, input length, answer length and scoring (a cache key)."""
        c = self.reader.config
        settings = (c.max_length, c.max_answer_tokens, self.scoring)
        return self._fingerprint.get(self.reader, settings, lambda state: fingerprint_parts(
            "span-reader-teacher", fingerprint_state_dict(state), tokenizer_state(self.reader.tokenizer), *settings))

    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[tuple[str, PassageLike]], batch_size: int | None = None,
                    show_progress: bool = False) -> np.ndarray:
        """Raw logits ``np.float32[N]`` of ``(question, passage)`` pairs, each read alone."""
        size = batch_size or self.batch_size
        out: list[np.ndarray] = []
        was_training = self.reader.training
        self.reader.eval()
        try:
            for i in tqdm(range(0, len(pairs), size), desc="span reader teacher", unit="batch",
                          disable=not show_progress):
                chunk = pairs[i:i + size]
                batch = self.reader.tokenize([q for q, _ in chunk], [[p] for _, p in chunk])
                logits = self.reader(**batch.model_inputs(targets=False))
                scores = passage_scores(logits["start_logits"], logits["end_logits"], batch.token_mask, self.scoring,
                                        self.reader.config.max_answer_tokens, logits["select_logits"])
                out.append(scores[:, 0].numpy().astype(np.float32))
        finally:
            self.reader.train(was_training)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """Every list's candidates scored in one batched pass, split back per list (input order)."""
        # the candidates themselves, not their text: the reader reads a passage's title apart from its text
        return score_as_pairs(self.score_pairs, lists, batch_size, show_progress, as_input=lambda p: p)


class Reading(NamedTuple):
    """What the reader makes of one question's passages: its answer and every passage score (``float32[k]``)."""

    answer: str
    mass: np.ndarray
    span: np.ndarray
    select: np.ndarray


@torch.inference_mode()
def read_questions(reader: SpanReader, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                   batch_size: int = 4, show_progress: bool = False) -> list[Reading]:
    """One forward per question over its first ``n_passages`` passages: best span (``""`` if none) and scores."""
    out: list[Reading] = []
    was_training = reader.training
    reader.eval()
    max_tokens = reader.config.max_answer_tokens
    try:
        for i in tqdm(range(0, len(questions), batch_size), desc="span reader", unit="batch",
                      disable=not show_progress):
            batch = reader.tokenize(questions[i:i + batch_size], passages[i:i + batch_size])
            logits = reader(**batch.model_inputs(targets=False))
            start, end = logits["start_logits"], logits["end_logits"]
            mass = passage_scores(start, end, batch.token_mask, "mass", max_tokens).numpy()
            spans = span_matrix(start.float(), end.float(), batch.token_mask, max_tokens)  # [B, k, L, L], once
            span = spans.flatten(-2).max(dim=-1).values.numpy()  # = passage_scores(..., "span")
            select = logits["select_logits"].numpy()
            for b, (text, _, _) in enumerate(best_spans(batch, start, end, max_tokens, spans)):
                n = int(batch.passage_mask[b].sum())
                out.append(Reading(text, *(x[b, :n].astype(np.float32) for x in (mass, span, select))))
    finally:
        reader.train(was_training)
    return out


def predict_answers(reader: SpanReader, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                    batch_size: int = 4, show_progress: bool = False) -> list[str]:
    """The best span over each question's first ``n_passages`` passages (``""`` when none can be read)."""
    return [r.answer for r in read_questions(reader, questions, passages, batch_size, show_progress)]
