"""Training arguments of :class:`~densekd.training.span_reader_trainer.SpanReaderTrainer`.

:class:`SpanReaderArgs` is a :class:`~densekd.training.arguments.DensekdArguments` (a
``transformers.TrainingArguments`` with densekd's shared defaults) plus the pointer reader's settings
(:class:`~densekd.encoders.span_reader.SpanReaderConfig`). ``per_device_train_batch_size`` counts
questions (each reads ``n_passages`` passages).

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* ``learning_rate=1e-4``: a BERT fine-tuning rate. On squad-open with MiniLM it is too low for a short
  run (300 steps left the pointer near uniform); the probe and the loop config use 5e-4 with 2 frozen
  layers (``bench/fid_reader_probe.py``, ``configs/squad-fidkd.yaml``).
* ``frozen_layers=4`` of MiniLM's 6 (as :class:`~densekd.encoders.span_reader.SpanReaderConfig`): the
  cheapest setting, training the top 2 layers from cached states (~1.8 s per 8 questions x 5 passages
  on 2 CPU cores); 2 frozen layers cost ~2x a step and read better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from densekd.encoders.span_reader import SpanReaderConfig
from densekd.training.arguments import DensekdArguments


@dataclass
class SpanReaderArgs(DensekdArguments):
    """Arguments of :func:`~densekd.training.span_reader_trainer.train_span_reader` (module docstring)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start encoder checkpoint (or a saved span reader); None = all-MiniLM-L6-v2."})
    n_passages: int = field(default=5, metadata={"help": "Passages read per question (shared normalisation)."})
    max_length: int = field(default=192, metadata={"help": "Tokens per question + passage pair."})
    frozen_layers: int = field(
        default=4, metadata={"help": "Lower encoder layers kept frozen; their states are computed once and cached."})
    max_answer_tokens: int = field(default=16, metadata={"help": "Longest answer span (tokens) when decoding."})
    loss_mode: str = field(
        default="marginal", metadata={"help": "marginal (sum over answer occurrences) or hard_em (best one)."})

    select_weight: float = field(
        default=0.0, metadata={"help": "Weight of the passage-selection loss (0 = pointer loss only)."})

    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps (>= 1) or a ratio of all steps (< 1)."})

    def validate(self) -> None:
        """The reader settings' own checks (:class:`~densekd.encoders.span_reader.SpanReaderConfig`)."""
        SpanReaderConfig(**self.reader_overrides())

    def reader_overrides(self) -> dict[str, Any]:
        """The :class:`~densekd.encoders.span_reader.SpanReaderConfig` fields set here."""
        return {"n_passages": self.n_passages, "max_length": self.max_length, "frozen_layers": self.frozen_layers,
                "max_answer_tokens": self.max_answer_tokens, "loss_mode": self.loss_mode,
                "select_weight": self.select_weight}
