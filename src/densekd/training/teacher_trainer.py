"""Fine-tune a cross-encoder teacher on training groups (query, positive, negatives).

Data contract
-------------
* Items come from :class:`~densekd.training.dataset.TrainGroupDataset` (``query``, ``pids``,
  ``passages``: ``G`` candidates, the positive first; seeded per ``(seed, epoch, idx)``).
* :class:`PairCollator` turns ``B`` items into ``{"pairs": tokenizer output [B*G, L] (group-major: row
  i*G + j is candidate j of query i), "mask": bool[B, G]}``; ``mask`` is False for ids repeated within
  a group (the dataset pads short groups by repeating), which the losses ignore.
* :class:`CrossEncoderTrainer` reshapes the model's **raw logits** to ``[B, G]`` and applies
  :func:`~densekd.losses.contrastive.listwise_loss` (InfoNCE at temperature 1) or
  :func:`~densekd.losses.pointwise.pointwise_loss` (``TeacherConfig.loss``); both are per-micro-batch
  means, which the HF Trainer divides by the gradient-accumulation steps. Saving and strict resuming
  are :class:`~densekd.training.checkpointing.CheckpointTrainer`'s (a :meth:`CrossEncoder.save_pretrained
  <densekd.encoders.cross_encoder.CrossEncoder.save_pretrained>` folder per checkpoint).
* :func:`train_cross_encoder` is the one-call entry point; the returned model predicts raw logits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments, set_seed

from densekd.data.types import Corpus, Queries, TrainGroup
from densekd.encoders.cross_encoder import CONFIG_NAME, CrossEncoder
from densekd.losses.contrastive import listwise_loss
from densekd.losses.pointwise import pointwise_loss
from densekd.training.checkpointing import TRAINING_ARGS_JSON, CheckpointTrainer  # noqa: F401 (re-exported)
from densekd.training.collator import repeat_mask
from densekd.training.dataset import TrainGroupDataset
from densekd.training.teacher_config import TeacherConfig

logger = logging.getLogger(__name__)


#: ``TeacherConfig.loss`` -> the loss over the raw logits ``[B, G]`` (positive in column 0) and mask
LOSSES: dict[str, Callable[[Tensor, Tensor | None], Tensor]] = {
    "listwise": listwise_loss, "pointwise": pointwise_loss}


# ----------------------------------------------------------------------------------------- collation
@dataclass
class PairTokenizer:
    """Picklable ``(queries, passages) -> dict[str, Tensor]`` with the truncation of :class:`CrossEncoder`.

    Dataloader workers started with ``spawn`` pickle the collator; a bound ``CrossEncoder.tokenize_pairs``
    would pickle the whole model into each worker.
    """

    tokenizer: Any
    max_length: int

    def __call__(self, queries: list[str], passages: list[str]) -> dict[str, Tensor]:
        return dict(self.tokenizer(list(queries), list(passages), padding=True, truncation="longest_first",
                                   max_length=self.max_length, return_tensors="pt"))


class PairCollator:
    """Tokenise every ``(query, candidate)`` pair of ``B`` groups, group-major (module docstring).

    Parameters
    ----------
    tokenize_pairs
        ``(queries[N], passages[N]) -> dict[str, Tensor]`` (padding and truncation inside), e.g.
        :class:`PairTokenizer` or :meth:`CrossEncoder.tokenize_pairs`.
    """

    def __init__(self, tokenize_pairs: Callable[[list[str], list[str]], dict[str, Tensor]]):
        self.tokenize_pairs = tokenize_pairs

    @classmethod
    def from_encoder(cls, encoder: CrossEncoder) -> PairCollator:
        """Collator with the tokenizer and ``max_length`` of ``encoder``."""
        return cls(PairTokenizer(encoder.tokenizer, encoder.max_length))

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("PairCollator got an empty batch")
        pids = [list(item["pids"]) for item in items]
        if len({len(g) for g in pids}) != 1:
            raise ValueError(f"all items of a batch need the same group size, got {sorted({len(g) for g in pids})}")
        queries = [item["query"] for item in items for _ in item["passages"]]
        passages = [text for item in items for text in item["passages"]]
        if len(passages) != sum(map(len, pids)):
            raise ValueError("every item needs one passage text per pid")
        return {"pairs": dict(self.tokenize_pairs(queries, passages)), "mask": repeat_mask(pids)}


# ----------------------------------------------------------------------------------------- trainer
class CrossEncoderTrainer(CheckpointTrainer):
    """HF ``Trainer`` for a :class:`CrossEncoder` on (query, positive, negatives) groups.

    Parameters
    ----------
    model
        The cross-encoder to fine-tune.
    args
        A :class:`TeacherConfig` (its ``loss`` picks one of :data:`LOSSES`).
    data_collator
        Default: :meth:`PairCollator.from_encoder`.
    **kwargs
        Passed to ``transformers.Trainer`` (``train_dataset``, ``eval_dataset``, ``callbacks``, ...).

    Examples
    --------
    >>> trainer = CrossEncoderTrainer(ce, TeacherConfig("out"), train_dataset=ds)   # doctest: +SKIP
    >>> trainer.train(); trainer.save_model("out/final")                          # doctest: +SKIP
    """

    checkpoint_marker = CONFIG_NAME

    def __init__(self, model: CrossEncoder, args: TeacherConfig, data_collator: Any = None, **kwargs: Any):
        if not isinstance(args, TeacherConfig):
            raise TypeError(f"CrossEncoderTrainer needs a TeacherConfig, got {type(args).__name__}")
        super().__init__(model, args, data_collator=data_collator or PairCollator.from_encoder(model), **kwargs)
        self.loss_fn = LOSSES[args.loss]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Score all pairs and apply the configured loss; ``num_items_in_batch`` is unused."""
        mask = inputs["mask"]                                            # [B, G]
        # through `model` (possibly DDP-wrapped) so DDP sees the forward
        logits = model(inputs["pairs"]).view(mask.shape)                 # [B*G] -> [B, G]
        loss = self.loss_fn(logits, mask)
        return (loss, {"logits": logits}) if return_outputs else loss


class EvalFnCallback(TrainerCallback):
    """Call ``eval_fn(model) -> dict[str, float]`` at every epoch end; record ``eval_<name>`` values.

    The values go to ``state.log_history`` (hence ``trainer_state.json`` in checkpoints) and the log.
    """

    def __init__(self, eval_fn: Callable[[CrossEncoder], dict[str, float]]):
        self.eval_fn = eval_fn

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or model is None:
            return
        metrics = {f"eval_{k}": float(v) for k, v in self.eval_fn(model).items()}
        state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})
        logger.info("epoch %s: %s", state.epoch, metrics)


def train_cross_encoder(groups: Sequence[TrainGroup], queries: Queries, corpus: Corpus, config: TeacherConfig,
                        model_path: str | os.PathLike | None = None,
                        eval_fn: Callable[[CrossEncoder], dict[str, float]] | None = None,
                        resume_from_checkpoint: str | os.PathLike | None = None) -> CrossEncoder:
    """Fine-tune a cross-encoder on training groups and return it (also saved to ``config.output_dir``).

    Parameters
    ----------
    groups
        Training groups: every group needs a positive, and negatives for a useful loss.
    queries, corpus
        Text lookups for the group ids.
    config
        A :class:`TeacherConfig` (loss, group size, max length, optimisation settings, ``seed``).
    model_path
        Start checkpoint: an HF re-ranker, a densekd cross-encoder folder or any HF encoder (new
        head); ``None`` = bundled all-MiniLM-L6-v2 with a new head.
    eval_fn
        Optional ``model -> {metric: value}`` run at every epoch end (e.g. re-rank a dev run with
        :func:`densekd.teachers.rerank.rerank` and :func:`densekd.eval.metrics.evaluate`).
    resume_from_checkpoint
        A ``checkpoint-N`` folder of an interrupted run with the same ``config`` (``save_strategy``
        ``"steps"``): weights, optimizer, scheduler, RNG states and data position are restored, so
        the result equals an uninterrupted run.

    Returns
    -------
    CrossEncoder
        The trained model (train mode off); ``predict`` gives raw logits.
    """
    # the classification head of a plain encoder is initialised from the global RNG: seed it first
    set_seed(config.seed)
    model = CrossEncoder.from_pretrained(model_path, max_length=config.max_length)
    dataset = TrainGroupDataset(groups, queries, corpus, group_size=config.group_size, seed=config.seed,
                                negative_sampling=config.negative_sampling)
    callbacks = [EvalFnCallback(eval_fn)] if eval_fn is not None else None
    trainer = CrossEncoderTrainer(model, config, train_dataset=dataset, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None)
    trainer.save_model(config.output_dir)
    model.eval()
    return model
