"""One validation pass over every number of a config (:func:`check_numbers`): the pipeline configs and
the settings of ``densekd index`` / ``search``.

Contracts
---------
* Every ``int`` / ``float`` field of a config, nested sections included, has a rule in
  :data:`RULES`, looked up by the field name (``batch_size`` means the same thing in every section),
  else by its suffix (``_batch_size``, ``_length``, ``_steps``, ...). A numeric field without a rule
  is a programming error: :func:`check_numbers` raises ``TypeError`` so a new field cannot slip by
  unchecked (and the test suite walks every config).
* Floats must be finite: NaN passes every ``<``/``>`` test, so without this ``epochs=nan`` would
  train for no step and report the start model.
* Violations raise ``ValueError`` naming the full key (``student.learning_rate``), the rule and the
  value; the config loader turns it into a ``densekd: error:`` line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["RULES", "check_numbers", "rule_for"]

Rule = tuple[Callable[[float], bool], str]

POSITIVE: Rule = (lambda x: x > 0, "> 0")
AT_LEAST_1: Rule = (lambda x: x >= 1, ">= 1")
NON_NEGATIVE: Rule = (lambda x: x >= 0, ">= 0")
FRACTION: Rule = (lambda x: 0 <= x <= 1, "in [0, 1]")
STEPS_OR_ALL: Rule = (lambda x: x == -1 or x >= 1, "-1 (no limit) or >= 1")
AT_LEAST_2: Rule = (lambda x: x >= 2, ">= 2 (one positive and at least one negative)")
# below 1: it becomes TrainingArguments.warmup_steps, which transformers reads as a step count from 1 up
# (warmup_ratio 1.0 would silently warm up for a single step)
RATIO_BELOW_1: Rule = (lambda x: 0 <= x < 1, "in [0, 1)")

#: field name (or ``"*suffix"``) -> rule; exact names win over suffixes
RULES: dict[str, Rule] = {
    "epochs": POSITIVE,
    "learning_rate": POSITIVE,
    "head_learning_rate": POSITIVE,
    "temperature": POSITIVE,
    "warmup_ratio": RATIO_BELOW_1,
    "max_steps": STEPS_OR_ALL,
    "seed": NON_NEGATIVE,
    "group_size": AT_LEAST_2,
    "iterations": AT_LEAST_1,
    "depth": AT_LEAST_1,
    "k": AT_LEAST_1,
    "n_negatives": AT_LEAST_1,
    "n_mixup": NON_NEGATIVE,
    "n_masked": NON_NEGATIVE,
    "colbert_dim": AT_LEAST_1,
    "decoder_layers": AT_LEAST_1,
    "frozen_layers": NON_NEGATIVE,
    "max_answer_tokens": AT_LEAST_1,
    "select_weight": NON_NEGATIVE,
    "num_beams": AT_LEAST_1,
    "warm_epochs": NON_NEGATIVE,
    "max_tokens": AT_LEAST_1,
    "max_train_queries": AT_LEAST_1,
    "max_eval_queries": AT_LEAST_1,
    "eval_max_queries": AT_LEAST_1,
    "*_batch_size": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "*_length": AT_LEAST_1,
    "*_fraction": FRACTION,
    "*_depth": AT_LEAST_1,
    "save_steps": NON_NEGATIVE,
    "eval_steps": NON_NEGATIVE,
    "logging_steps": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    # the ensemble teacher (teacher.label_dense, teacher.positive_margin) and self-supervised queries
    "folds": (lambda x: x >= 2, ">= 2 (cross-fitting needs two folds)"),
    "fold_seed": NON_NEGATIVE,
    "positive_margin": NON_NEGATIVE,
    "pseudo_queries": NON_NEGATIVE,
    "pseudo_seed": NON_NEGATIVE,
    # settings of the building-block commands (densekd index / search)
    "k1": POSITIVE,
    "b": FRACTION,
    "chunk_size": AT_LEAST_1,
    "num_shards": AT_LEAST_1,
    "shard_index": NON_NEGATIVE,
    # densekd qad
    "passages": AT_LEAST_1,
    "held_out": NON_NEGATIVE,
    "score_weight": NON_NEGATIVE,
}


def rule_for(name: str) -> Rule | None:
    """The rule of a field name: an exact entry of :data:`RULES`, else the longest matching suffix."""
    if name in RULES:
        return RULES[name]
    suffixes = [k for k in RULES if k.startswith("*") and name.endswith(k[1:])]
    return RULES[max(suffixes, key=len)] if suffixes else None


def _is_number_type(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is not None and args and typing.get_origin(tp) not in (list, dict, tuple):
        return any(_is_number_type(a) for a in args)  # X | None
    return tp in (int, float)


def _check_value(key: str, name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"key {key!r} must be a finite number, got {value}")
    rule = rule_for(name)
    if rule is None:
        raise TypeError(f"config field {key!r} is a number without a range rule: add one to "
                        "densekd.pipeline.validate.RULES")
    ok, text = rule
    if not ok(value):
        raise ValueError(f"key {key!r} must be {text}, got {value}")


def _check_special(key: str, name: str, value: Any) -> None:
    """Number-holding fields that are not a single number: ranges and weight maps."""
    if name == "rank_range":
        if (len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
                or not 0 <= value[0] < value[1]):
            raise ValueError(f"key {key!r} must be [lo, hi] with 0 <= lo < hi, got {value}")
    elif name == "seeds":
        if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value) \
                or len(set(value)) != len(value):
            raise ValueError(f"key {key!r} must be a non-empty list of distinct integers >= 0, got {value}")
    elif name == "fusion":
        for signal, weight in value.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"key '{key}.{signal}' must be a finite weight >= 0, got {weight}")
        if not any(w > 0 for w in value.values()):
            raise ValueError(f"key {key!r} needs at least one weight > 0, got {value}")


def check_numbers(cfg: Any, prefix: str = "") -> None:
    """Check every number of the config dataclass ``cfg`` (and of its nested sections) against :data:`RULES`.

    Raises
    ------
    ValueError
        Naming the first key whose value is not finite or out of range.

    Examples
    --------
    >>> from densekd.pipeline.config import PipelineConfig
    >>> cfg = PipelineConfig()
    >>> cfg.student.batch_size = 0
    >>> check_numbers(cfg)
    Traceback (most recent call last):
    ...
    ValueError: key 'student.batch_size' must be >= 1, got 0
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            check_numbers(value, key + ".")
        elif f.name in ("rank_range", "fusion", "seeds"):
            _check_special(key, f.name, value)
        elif _is_number_type(hints[f.name]) and value is not None:
            _check_value(key, f.name, value)
