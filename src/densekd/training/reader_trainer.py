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
  :meth:`FiDReader.save_pretrained <densekd.encoders.reader.FiDReader.save_pretrained>` folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, set_seed

from densekd.encoders.reader import FiDReader, PassageLike
from densekd.training._saving import TRAINING_ARGS_JSON, save_pretrained_checkpoint  # noqa: F401 (re-exported)
from densekd.training.callbacks import EpochSetterCallback


class ReaderExample(NamedTuple):
    """One training question with its gold answers and its (retrieved) passages, best first."""

    question: str
    answers: list[str]
    passages: list[PassageLike]


@dataclass
class ReaderConfig(TrainingArguments):
    """Arguments for :func:`train_reader`: ``TrainingArguments`` plus the reader settings.

    ``per_device_train_batch_size`` counts questions (each reads ``n_passages`` passages).

    Attributes
    ----------
    model_name_or_path
        Start checkpoint (see :meth:`FiDReader.from_pretrained`); ``None`` = MiniLM BERT2BERT.
    n_passages, passage_max_length, answer_max_length, decoder_layers, freeze_encoder
        :class:`~densekd.encoders.reader.FiDReaderConfig` fields.

    Defaults that differ from ``TrainingArguments``: ``learning_rate=5e-5`` with 10 % warm-up (FiD
    used 1e-4 for T5; a warm-started BERT2BERT with random cross-attention is steadier lower),
    ``remove_unused_columns=False`` (items are texts), ``prediction_loss_only=True`` (evaluation would
    otherwise gather ``[B, T, vocab]`` logits), ``report_to="none"``, ``logging_steps=10``.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start checkpoint; None = bundled all-MiniLM-L6-v2 as BERT2BERT."})
    n_passages: int = field(default=5, metadata={"help": "Passages read per question."})
    passage_max_length: int = field(default=160, metadata={"help": "Tokens per question+passage input."})
    answer_max_length: int = field(default=24, metadata={"help": "Answer tokens, EOS included."})
    decoder_layers: int | None = field(
        default=None, metadata={"help": "Keep the first N decoder layers at warm start (None = all)."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the decoder only."})

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: items are texts, not forward kwargs."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps (>= 1) or a ratio of all steps (< 1)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X optimizer steps."})
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Trainer.evaluate reports the loss only (no [B, T, vocab] logits)."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Integrations to report to ('none' = none)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # pinned host memory only helps copies to an accelerator; on CPU torch warns on every epoch
        self.dataloader_pin_memory = self.dataloader_pin_memory and torch.cuda.is_available()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: reader items are texts")

    def reader_overrides(self) -> dict[str, Any]:
        """The :class:`FiDReaderConfig` fields set by this config."""
        return {"n_passages": self.n_passages, "passage_max_length": self.passage_max_length,
                "answer_max_length": self.answer_max_length, "decoder_layers": self.decoder_layers,
                "freeze_encoder": self.freeze_encoder}


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


class ReaderTrainer(Trainer):
    """HF ``Trainer`` for a :class:`FiDReader`; overrides only ``compute_loss`` and ``_save``.

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

    # the loss is a per-micro-batch token mean: let Trainer divide by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model: FiDReader, args: TrainingArguments, data_collator: Any = None, **kwargs: Any):
        if args.remove_unused_columns:
            raise ValueError("ReaderTrainer needs remove_unused_columns=False (items are texts)")
        super().__init__(model=model, args=args, data_collator=data_collator or ReaderCollator(model.tokenize_fn),
                         **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(EpochSetterCallback(self.train_dataset))

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
        """Teacher-forced token-mean cross-entropy; ``num_items_in_batch`` is unused."""
        outputs = model(**inputs)  # through `model` (possibly DDP-wrapped) so DDP sees the forward
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write a :meth:`FiDReader.save_pretrained` folder and ``training_args.json`` (no pickle)."""
        save_pretrained_checkpoint(self, output_dir, state_dict,
                                   "ReaderTrainer saves through FiDReader.save_pretrained; sharded states "
                                   "(DeepSpeed ZeRO-3, FSDP) are not supported: use DDP")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Restore reader weights from a :meth:`_save` folder, strictly.

        HF's own loader reads ``model.safetensors`` non-strictly into the wrapper; that file omits
        tied weights (the LM head), so HF reports them missing and then fails on a ``PreTrainedModel``
        attribute the wrapper lacks. Loading the folder as a reader and copying its full state dict
        checks every parameter instead (as :class:`~densekd.training.trainer.DistillTrainer` does).
        """
        from densekd.encoders.reader import CONFIG_NAME

        if not os.path.isfile(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            raise ValueError(f"{resume_from_checkpoint} is not a ReaderTrainer checkpoint (no {CONFIG_NAME})")
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        target.load_state_dict(FiDReader.from_pretrained(resume_from_checkpoint).state_dict(), strict=True)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end`` through the same strict loader as resuming."""
        self._load_from_checkpoint(self.state.best_model_checkpoint)


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
