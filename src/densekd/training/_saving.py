"""Checkpoint saving shared by the package's HF ``Trainer`` subclasses (private module).

A checkpoint folder is the model's own ``save_pretrained`` output plus ``training_args.json``
(``TrainingArguments.to_json_string()``); nothing is pickled.
"""

from __future__ import annotations

import os

from transformers import Trainer

from densekd.data.io import atomic_write

TRAINING_ARGS_JSON = "training_args.json"


def save_pretrained_checkpoint(trainer: Trainer, output_dir: str | None, state_dict: dict | None,
                               sharded_error: str) -> None:
    """The body of ``Trainer._save`` for a model that has its own ``save_pretrained(folder)``.

    Parameters
    ----------
    trainer
        The trainer whose (possibly wrapped) ``model`` and ``args`` are saved.
    output_dir
        Target folder; ``None`` = ``trainer.args.output_dir``.
    state_dict
        Must be ``None``: a state dict handed in by HF means sharded training (DeepSpeed ZeRO-3, FSDP),
        which a ``save_pretrained`` of the unwrapped model cannot write.
    sharded_error
        Message of the ``NotImplementedError`` raised when ``state_dict`` is given.

    Raises
    ------
    NotImplementedError
        When ``state_dict`` is not ``None``.
    """
    if state_dict is not None:
        raise NotImplementedError(sharded_error)
    if not trainer.args.should_save:
        return
    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir)
    with atomic_write(os.path.join(output_dir, TRAINING_ARGS_JSON)) as f:
        f.write(trainer.args.to_json_string())
