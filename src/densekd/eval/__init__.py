"""Evaluation: ranking metrics over runs and qrels, and answer-string metrics for open-domain QA.

See :mod:`densekd.eval.metrics` (which queries are averaged, tie-breaking) and :mod:`densekd.eval.qa`
(answer normalisation, DPR has-answer) for the conventions.
"""

from __future__ import annotations

from densekd.eval.metrics import DEFAULT_METRICS, VALID_METRICS, check_metrics, evaluate, judged_queries, parse_metric
from densekd.eval.qa import (
    answer_recall, dpr_tokens, exact_match, f1_score, has_answer, normalize_answer, reader_metrics,
)

__all__ = [
    "DEFAULT_METRICS",
    "VALID_METRICS",
    "answer_recall",
    "check_metrics",
    "dpr_tokens",
    "evaluate",
    "exact_match",
    "f1_score",
    "has_answer",
    "judged_queries",
    "normalize_answer",
    "parse_metric",
    "reader_metrics",
]
