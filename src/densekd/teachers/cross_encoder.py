"""Cross-encoder teacher and re-ranking of a first-stage run.

Units
-----
:meth:`CrossEncoderTeacher.score` and :func:`rerank` return **raw logits** of the one-unit
classification head (unbounded floats, higher = more relevant), never sigmoid probabilities.

Fingerprint
-----------
``sha256(kind, max_length, tokenizer state, weights)``: the weights are hashed from memory (so a
model fine-tuned or edited in place gets a new fingerprint even before it is saved) and the result
is cached until a weight tensor changes (checked through the tensors' in-place version counters).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from densekd.data.io import DataFormatError
from densekd.data.types import Corpus, Queries, Run, top_k
from densekd.encoders.cross_encoder import CrossEncoder
from densekd.teachers.base import Teacher, fingerprint_parts, fingerprint_state_dict

_FINGERPRINT_KIND = "densekd.CrossEncoderTeacher/v1"


class CrossEncoderTeacher(CrossEncoder):
    """A :class:`~densekd.encoders.cross_encoder.CrossEncoder` that satisfies :class:`Teacher`.

    Load with ``CrossEncoderTeacher.from_pretrained(path, max_length=...)`` or wrap a model in memory
    (e.g. the output of ``train_cross_encoder``) with :meth:`from_encoder`; the weights are shared.

    Examples
    --------
    >>> teacher = CrossEncoderTeacher.from_pretrained("path/to/reranker")   # doctest: +SKIP
    >>> teacher.score([("what is aspirin", "Aspirin is a drug.")])          # doctest: +SKIP
    array([6.93], dtype=float32)
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int = 256):
        super().__init__(model, tokenizer, max_length)
        self._fingerprint_cache: tuple[tuple, str] | None = None

    @classmethod
    def from_encoder(cls, encoder: CrossEncoder) -> CrossEncoderTeacher:
        """Wrap an in-memory cross-encoder (shares its model and tokenizer, no copy)."""
        return cls(encoder.model, encoder.tokenizer, encoder.max_length)

    def score(self, pairs: list[tuple[str, str]], batch_size: int = 64,
              show_progress: bool = False) -> np.ndarray:
        """Raw logits ``np.float32[N]`` for ``N`` ``(query, passage)`` pairs, in input order."""
        return self.predict(pairs, batch_size=batch_size, show_progress=show_progress)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of weights, ``max_length`` and tokenizer (see the module docstring)."""
        state = self.model.state_dict()
        # Cheap change detector: every in-place update (optimizer step, load_state_dict, ``+=``) bumps a
        # tensor's version counter, and reassigning a parameter changes its storage pointer.
        key = (self.max_length, tuple((n, t.data_ptr(), t._version) for n, t in state.items()))
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            value = fingerprint_parts(_FINGERPRINT_KIND, self.max_length, _tokenizer_state(self.tokenizer),
                                      fingerprint_state_dict(state))
            self._fingerprint_cache = (key, value)
        return self._fingerprint_cache[1]


def _tokenizer_state(tokenizer: Any) -> str:
    """A digest of what decides tokenisation, excluding per-call truncation/padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The fast tokenizer's JSON also records the truncation/padding of the *last call*, which
        # would make the fingerprint change after the first predict(); those keys are dropped.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return fingerprint_parts(type(tokenizer).__name__, tokenizer.padding_side, tokenizer.truncation_side, text)


def rerank(teacher: Teacher, run: Run, queries: Queries, corpus: Corpus, k: int = 100,
           batch_size: int = 64, show_progress: bool = False) -> Run:
    """Re-score the top ``k`` documents of every query of ``run`` with ``teacher``.

    Parameters
    ----------
    teacher
        Any :class:`Teacher`; all pairs are scored in one call, so a cross-encoder length-sorts
        across queries.
    run
        First-stage ``qid -> {pid: score}``; the top ``k`` by score (ties by pid) are kept.
    queries, corpus
        Text lookups; passages are scored as ``Passage.full_text()`` (title and text).
    k
        Documents re-ranked per query; documents below rank ``k`` are dropped from the output.
    batch_size, show_progress
        Passed to ``teacher.score``.

    Returns
    -------
    Run
        ``qid -> {pid: teacher logit}`` for the same qids, each dict in decreasing score order.

    Raises
    ------
    DataFormatError
        When the run names a query or document that ``queries`` / ``corpus`` lack.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pairs: list[tuple[str, str]] = []
    spans: list[tuple[str, list[str]]] = []
    for qid, docs in run.items():
        if qid not in queries:
            raise DataFormatError(None, f"run has query {qid!r}, which is not in the queries")
        pids = [pid for pid, _ in top_k(docs, k)]
        missing = [pid for pid in pids if pid not in corpus]
        if missing:
            raise DataFormatError(None, f"run has documents {missing[:3]} for query {qid!r} that are not in the corpus")
        text = queries[qid].text
        pairs.extend((text, corpus[pid].full_text()) for pid in pids)
        spans.append((qid, pids))
    scores = teacher.score(pairs, batch_size=batch_size, show_progress=show_progress) if pairs else np.empty(0, dtype=np.float32)
    out: Run = {}
    start = 0
    for qid, pids in spans:
        ranked = zip(pids, scores[start:start + len(pids)].tolist())
        out[qid] = dict(sorted(ranked, key=lambda kv: (-kv[1], kv[0])))
        start += len(pids)
    return out
