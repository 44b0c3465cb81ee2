"""The training-arguments base of every densekd trainer: shared defaults and checks.

:class:`DensekdArguments` is a ``transformers.TrainingArguments`` that :class:`~densekd.training.config.DistillConfig`,
:class:`~densekd.training.teacher_config.TeacherConfig` and
:class:`~densekd.training.reader_config.ReaderConfig` extend with their own fields (each documented in
its own class, paired with its trainer by file name). It only changes defaults of
``TrainingArguments`` fields, so a subclass lists its fields in the same order as before the base
existed (``training_args.json`` is unchanged).

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* ``remove_unused_columns=False`` (and ``True`` is refused): items are dicts of texts and ids, not
  model-forward kwargs; the HF column filter would drop them before the collator sees them.
* ``prediction_loss_only=True``: ``Trainer.evaluate`` reports ``eval_loss`` only (retrieval metrics
  come from :class:`~densekd.training.callbacks.RetrievalEvalCallback`; a reader would otherwise gather
  ``[B, T, vocab]`` logits).
* ``logging_steps=10``, ``report_to="none"``: short runs log often; nothing is sent anywhere unless asked.
* ``dataloader_pin_memory`` only with CUDA: pinned host memory only helps copies to an accelerator,
  and on CPU torch warns on every epoch.
* Weights are always safetensors: transformers 5 removed ``save_safetensors``, and every densekd model's
  ``save_pretrained`` writes safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from densekd.training.dataset import NEGATIVE_SAMPLING_MODES

__all__ = ["DensekdArguments", "check_group_sampling"]


@dataclass
class DensekdArguments(TrainingArguments):
    """``TrainingArguments`` with the defaults and checks every densekd trainer shares (module docstring).

    Subclasses validate their own fields in :meth:`validate`, which ``__post_init__`` calls last.
    """

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: items are texts/ids, not forward kwargs."})
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Trainer.evaluate reports the loss only."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Integrations to report to ('none' = none)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # pinned host memory only helps copies to an accelerator; on CPU torch warns on every epoch
        self.dataloader_pin_memory = self.dataloader_pin_memory and torch.cuda.is_available()
        if self.remove_unused_columns:
            raise ValueError(f"remove_unused_columns must be False: {type(self).__name__} items are texts and "
                             "ids, which the HF column filter would drop")
        self.validate()

    def validate(self) -> None:
        """Check the subclass's own fields (raise ``ValueError`` naming the field)."""


def check_group_sampling(args: Any, min_group_size: int) -> None:
    """The checks of a config whose dataset samples ``group_size`` candidates per ``(seed, epoch, index)``.

    Parameters
    ----------
    args
        Has ``group_size``, ``negative_sampling``, ``dataloader_persistent_workers`` and
        ``dataloader_num_workers``.
    min_group_size
        Smallest valid ``group_size`` (1 positive + negatives).

    Raises
    ------
    ValueError
        For a ``group_size`` below ``min_group_size`` (or not an integer), an unknown
        ``negative_sampling``, or persistent dataloader workers (they keep the dataset copy of epoch 0,
        so ``set_epoch`` would never reach them).
    """
    size = args.group_size
    if not isinstance(size, int) or isinstance(size, bool) or size < min_group_size:
        raise ValueError(f"group_size must be an integer >= {min_group_size} (1 positive + negatives), got {size!r}")
    if args.negative_sampling not in NEGATIVE_SAMPLING_MODES:
        raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING_MODES}, got {args.negative_sampling!r}")
    if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
        raise ValueError("dataloader_persistent_workers=True would freeze negative sampling at epoch 0 "
                         "(workers keep their dataset copy); leave it False")
