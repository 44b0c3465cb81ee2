"""Teacher-signal fusion: one logit per candidate from a cross-encoder, BM25 and a dense retriever.

A cross-encoder trained on a few hundred queries can be weaker than BM25 on some queries and stronger on
others; a weighted sum of the signals is a better teacher than any one of them (the classic
interpolation of first-stage and rerank scores). Units differ (logits, BM25 scores, cosines), so each
signal is z-normalised over the query's candidate list (:func:`densekd.scores.zscore`) before the
weighted sum.

Contract
--------
* ``signals``: ``name -> {pid: score}`` for one query; a candidate a signal did not score gets that
  signal's lowest score for the query (it ranked below everything that signal returned).
* ``weights``: ``name -> weight``; names not in ``weights`` are ignored.
* Output: ``{pid: fused logit}``. When the only weighted signal is ``cross_encoder``, its raw logits are
  kept (times the weight): the teacher's own confidence survives, as plain cross-encoder
  distillation expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from densekd.scores import zscore

SIGNALS = ("cross_encoder", "bm25", "dense", "label_dense")


def check_weights(weights: Mapping[str, float]) -> None:
    """Raise ``ValueError`` for unknown signal names, negative weights or all-zero weights."""
    unknown = sorted(set(weights) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown teacher fusion signal(s) {unknown}; choose from {list(SIGNALS)}")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"fusion weights must be >= 0 with at least one > 0, got {dict(weights)}")


def _column(candidates: Sequence[str], scores: Mapping[str, float]) -> np.ndarray:
    present = [scores[p] for p in candidates if p in scores]
    floor = min(present) if present else 0.0
    return np.array([scores.get(p, floor) for p in candidates], dtype=np.float64)


def fuse_candidates(candidates: Sequence[str], signals: Mapping[str, Mapping[str, float]],
                    weights: Mapping[str, float]) -> dict[str, float]:
    """Fused teacher logit of each candidate of one query (see the module contract)."""
    check_weights(weights)
    active = {name: w for name, w in weights.items() if w > 0}
    missing = sorted(set(active) - set(signals))
    if missing:
        raise ValueError(f"fusion needs signal(s) {missing} but only {sorted(signals)} were computed")
    if set(active) == {"cross_encoder"}:
        col = _column(candidates, signals["cross_encoder"]) * active["cross_encoder"]
    else:
        col = sum(w * zscore(_column(candidates, signals[name])) for name, w in active.items())
    return {pid: float(v) for pid, v in zip(candidates, col)}
