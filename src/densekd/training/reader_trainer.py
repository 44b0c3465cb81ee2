"""Train a Fusion-in-Decoder reader on (question, answers, passages) examples.

Data contract
-------------
* An example is a :class:`ReaderExample` (or any ``(question, answers, passages)`` triple):
  ``answers`` a non-empty list of strings, ``passages`` a ranked list of
  :data:`~densekd.encoders.reader.PassageLike` (the reader keeps the first ``n_passages``).
* :class:`ReaderDataset` item ``idx`` at epoch ``e``: ``{"question", "answer", "passages"}``; the
  target answer is drawn from ``answers`` by a generator seeded with ``(seed, e, idx)`` (FiD trains
  on a random gold answer per step), so it rotates across epochs and is reproducible.
* :class:`ReaderCollator` calls a tokenize function ``(questions, passages, answers) ->
  dict[str, Tensor]`` (:class:`~densekd.encoders.reader.FiDTokenizer` layout: ``input_ids`` /
  ``attention_mask`` ``[B, k, L]``, ``passage_mask`` ``[B, k]``, ``labels`` ``[B, T]``).
* :class:`ReaderTrainer` minimises the reader's token-mean cross-entropy of each micro-batch (the
  Trainer divides it by the gradient-accumulation steps) and saves
  :meth:`FiDReader.save_pretrained <densekd.encoders.reader.FiDReader.save_pretrained>` folders
  (:class:`~densekd.training.checkpointing.CheckpointTrainer`). Its arguments are
  :class:`~densekd.training.reader_config.ReaderConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from transformers import TrainingArguments, set_seed

from densekd.encoders.reader import CONFIG_NAME, FiDReader, PassageLike
from densekd.training.checkpointing import TRAINING_ARGS_JSON, CheckpointTrainer  # noqa: F401 (re-exported)
from densekd.training.reader_config import ReaderConfig


class ReaderExample(NamedTuple):
    """One training question with its gold answers and its (retrieved) passages, best first."""

    question: str
    answers: list[str]
    passages: list[PassageLike]


class ReaderDataset(Dataset):
    """Map-style dataset of reader examples; the target answer is seeded per ``(seed, epoch, idx)``.

    Parameters
    ----------
    examples
        ``(question, answers, passages)`` triples; every one needs an answer and a passage.
    seed
        Seed of the answer choice.
    """

    def __init__(self, examples: Sequence[ReaderExample | tuple], seed: int = 0):
        self.examples = [ReaderExample(*ex) for ex in examples]
        for i, ex in enumerate(self.examples):
            if not ex.answers or not ex.passages:
                raise ValueError(f"example {i} ({ex.question!r}) needs at least one answer and one passage")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose answer draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        ex = self.examples[idx]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        answer = ex.answers[int(rng.integers(len(ex.answers)))]
        return {"question": ex.question, "answer": answer, "passages": list(ex.passages)}


class ReaderCollator:
    """Tokenise ``B`` items with ``tokenize(questions, passages, answers)`` (module docstring).

    Parameters
    ----------
    tokenize
        E.g. ``reader.tokenize_fn`` (a picklable :class:`~densekd.encoders.reader.FiDTokenizer`).
    """

    def __init__(self, tokenize: Callable[..., dict[str, Tensor]]):
        self.tokenize = tokenize

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        if not items:
            raise ValueError("ReaderCollator got an empty batch")
        return dict(self.tokenize([it["question"] for it in items], [it["passages"] for it in items],
                                  [it["answer"] for it in items]))


class ReaderTrainer(CheckpointTrainer):
    """HF ``Trainer`` for a :class:`FiDReader`; adds only ``compute_loss`` to :class:`CheckpointTrainer`.

    Saving writes :meth:`FiDReader.save_pretrained <densekd.encoders.reader.FiDReader.save_pretrained>`
    folders; resuming loads them strictly (HF's own loader reads ``model.safetensors`` non-strictly into
    the wrapper, and that file omits tied weights such as the LM head).

    Parameters
    ----------
    model
        The reader.
    args
        ``TrainingArguments`` (e.g. :class:`ReaderConfig`) with ``remove_unused_columns=False``.
    data_collator
        Default: ``ReaderCollator(model.tokenize_fn)``.
    **kwargs
        Passed to ``transformers.Trainer`` (``train_dataset``, ``eval_dataset``, ``callbacks``...).
    """

    checkpoint_marker = CONFIG_NAME

    def __init__(self, model: FiDReader, args: TrainingArguments, data_collator: Any = None, **kwargs: Any):
        if args.remove_unused_columns:
            raise ValueError("ReaderTrainer needs remove_unused_columns=False (items are texts)")
        super().__init__(model, args, data_collator=data_collator or ReaderCollator(model.tokenize_fn), **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
        """Teacher-forced token-mean cross-entropy; ``num_items_in_batch`` is unused."""
        outputs = model(**inputs)  # through `model` (possibly DDP-wrapped) so DDP sees the forward
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def train_reader(examples: Sequence[ReaderExample | tuple], config: ReaderConfig,
                 reader: FiDReader | None = None) -> FiDReader:
    """Train a FiD reader and return it (also saved to ``config.output_dir``).

    Parameters
    ----------
    examples
        ``(question, answers, passages)`` triples (:class:`ReaderExample`).
    config
        A :class:`ReaderConfig` (reader settings, optimisation, ``seed``).
    reader
        Optional reader to continue training; default ``FiDReader.from_pretrained(
        config.model_name_or_path, **config.reader_overrides())``.

    Returns
    -------
    FiDReader
        The trained reader, in eval mode.
    """
    # new (cross-attention, LM-head) weights are drawn from the global RNG: seed before building
    set_seed(config.seed)
    if reader is None:
        reader = FiDReader.from_pretrained(config.model_name_or_path, **config.reader_overrides())
    trainer = ReaderTrainer(reader, config, train_dataset=ReaderDataset(examples, seed=config.seed))
    trainer.train()
    trainer.save_model(config.output_dir)
    reader.eval()
    return reader
