"""Training arguments of :class:`~densekd.training.reader_trainer.ReaderTrainer`.

:class:`ReaderConfig` is a :class:`~densekd.training.arguments.DensekdArguments` (a
``transformers.TrainingArguments`` with the defaults and checks every densekd trainer shares) with the
FiD reader settings added. It is a plain dataclass, so it reads from YAML/CLI through ``HfArgumentParser``.

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* Those of :class:`~densekd.training.arguments.DensekdArguments` (``remove_unused_columns=False``:
  items are texts; ``prediction_loss_only=True``: evaluation would otherwise gather ``[B, T, vocab]``
  logits; ``logging_steps=10``, ``report_to="none"``).
* ``learning_rate=5e-5`` with 10 % warm-up: FiD used 1e-4 for T5; a warm-started BERT2BERT with random
  cross-attention is steadier lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from densekd.training.arguments import DensekdArguments


@dataclass
class ReaderConfig(DensekdArguments):
    """Arguments for :func:`~densekd.training.reader_trainer.train_reader`: ``TrainingArguments`` + reader settings.

    ``per_device_train_batch_size`` counts questions (each reads ``n_passages`` passages).

    Attributes
    ----------
    model_name_or_path
        Start checkpoint (see :meth:`FiDReader.from_pretrained <densekd.encoders.reader.FiDReader.from_pretrained>`);
        ``None`` = MiniLM BERT2BERT.
    n_passages, passage_max_length, answer_max_length, decoder_layers, freeze_encoder
        :class:`~densekd.encoders.reader.FiDReaderConfig` fields.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start checkpoint; None = bundled all-MiniLM-L6-v2 as BERT2BERT."})
    n_passages: int = field(default=5, metadata={"help": "Passages read per question."})
    passage_max_length: int = field(default=160, metadata={"help": "Tokens per question+passage input."})
    answer_max_length: int = field(default=24, metadata={"help": "Answer tokens, EOS included."})
    decoder_layers: int | None = field(
        default=None, metadata={"help": "Keep the first N decoder layers at warm start (None = all)."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the decoder only."})

    # ----- TrainingArguments defaults changed for this use (module docstring says why)
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps (>= 1) or a ratio of all steps (< 1)."})

    def reader_overrides(self) -> dict[str, Any]:
        """The :class:`~densekd.encoders.reader.FiDReaderConfig` fields set by this config."""
        return {"n_passages": self.n_passages, "passage_max_length": self.passage_max_length,
                "answer_max_length": self.answer_max_length, "decoder_layers": self.decoder_layers,
                "freeze_encoder": self.freeze_encoder}
