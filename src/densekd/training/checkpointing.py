"""The checkpointing base of every densekd trainer: saving, strict resuming, the shared HF settings.

A checkpoint folder is the model's own ``save_pretrained`` output plus ``training_args.json``
(``TrainingArguments.to_json_string()``); nothing is pickled. HF's own loaders expect
``model.safetensors`` with the wrapper's parameter names and would *silently* load nothing (or, for a
reader whose file omits tied weights, fail on a ``PreTrainedModel`` attribute the wrapper lacks), so
resuming and ``load_best_model_at_end`` load the folder with the model class's ``from_pretrained``
and copy its state dict with a strict ``load_state_dict``: every parameter must match.

What :class:`CheckpointTrainer` sets for its subclasses
-------------------------------------------------------
* ``loss_is_scaled_for_ga = False``: every densekd loss is a per-micro-batch mean, so the Trainer
  divides it by the gradient-accumulation steps (``num_items_in_batch`` is never used).
* ``can_return_loss = True``: densekd models' ``forward`` takes no labels, so without it HF's
  ``prediction_step`` would not route ``evaluate()`` through ``compute_loss``.
* :class:`~densekd.training.callbacks.EpochSetterCallback` when the training dataset has
  ``set_epoch`` (per-epoch sampling under DDP; the callback's module docstring says why).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from transformers import Trainer

from densekd.data.io import atomic_write
from densekd.training.callbacks import EpochSetterCallback

TRAINING_ARGS_JSON = "training_args.json"


def save_pretrained_checkpoint(trainer: Trainer, output_dir: str | None, state_dict: dict | None) -> None:
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

    Raises
    ------
    NotImplementedError
        When ``state_dict`` is not ``None``.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if state_dict is not None:
        raise NotImplementedError(f"{type(trainer).__name__} saves through {type(model).__name__}.save_pretrained; "
                                  "sharded states (DeepSpeed ZeRO-3, FSDP, SageMaker MP) are not supported: use DDP")
    if not trainer.args.should_save:
        return
    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    model.save_pretrained(output_dir)
    with atomic_write(os.path.join(output_dir, TRAINING_ARGS_JSON)) as f:
        f.write(trainer.args.to_json_string())


class CheckpointTrainer(Trainer):
    """HF ``Trainer`` base of the densekd trainers: subclasses add ``compute_loss`` (module docstring).

    Subclasses set :attr:`checkpoint_marker`, the file whose presence makes a folder one of their
    model's ``save_pretrained`` folders; the model class must have ``from_pretrained(folder)``.
    """

    # our losses are per-micro-batch means: let Trainer divide by the accumulation steps (module doc)
    loss_is_scaled_for_ga = False
    #: the file that marks a complete ``save_pretrained`` folder of the trained model
    checkpoint_marker: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, args: Any, **kwargs: Any):
        super().__init__(model=model, args=args, **kwargs)
        # densekd models' forward takes no labels: without this HF's prediction_step would not route
        # evaluate() through compute_loss
        self.can_return_loss = True
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(EpochSetterCallback(self.train_dataset))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the model's ``save_pretrained`` folder and ``training_args.json`` (no pickle)."""
        save_pretrained_checkpoint(self, output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Restore the weights from a :meth:`_save` folder, strictly (every parameter must match)."""
        if not os.path.isfile(os.path.join(resume_from_checkpoint, self.checkpoint_marker)):
            raise ValueError(f"{resume_from_checkpoint} is not a {type(self).__name__} checkpoint "
                             f"(no {self.checkpoint_marker})")
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        # the model's own class (e.g. ErnieSearchModel: its heads too) reads the folder
        saved = type(target).from_pretrained(resume_from_checkpoint)
        target.load_state_dict(saved.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end`` through the same strict loader as resuming."""
        self._load_from_checkpoint(self.state.best_model_checkpoint)
