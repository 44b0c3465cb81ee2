"""Train the extractive pointer reader on ``(question, answers, passages)`` examples, from cached states.

Data contract
-------------
* Examples are :class:`~densekd.training.reader_trainer.ReaderExample` triples (answers: every gold
  string; all their occurrences in the read passages are targets; no passage label is used).
* :class:`SpanReaderDataset` tokenises every example once. With ``frozen_layers > 0`` it also runs the
  frozen lower layers once and keeps their output (fp16, ``[k, L_q, H]`` per question, ``L_q`` the
  question's own longest pair), so each epoch only runs the trained top layers: on CPU this is what
  makes all of squad-open's training questions affordable. After every chunk the freed heap is handed
  back to the OS (:func:`release_free_heap`): the kept states, one small tensor per question, sit between
  each chunk's freed float32 temporaries, and glibc's fragmented heap grew to ~5x their size (6,250
  questions were killed at 24 GiB for ~4.3 GiB of states). Items are dicts of tensors
  (``hidden`` or ``input_ids``/``token_type_ids``, ``attention_mask``, ``token_mask``,
  ``start_targets``, ``end_targets``); :func:`pad_collate` pads ``k`` and ``L`` across a batch.
* :class:`SpanReaderTrainer` minimises :func:`~densekd.losses.span.span_pointer_loss` (the model's own
  ``loss``) and saves :meth:`SpanReader.save_pretrained <densekd.encoders.span_reader.SpanReader.save_pretrained>`
  folders (:class:`~densekd.training.checkpointing.CheckpointTrainer`: resuming loads them strictly).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import set_seed

from densekd.encoders.span_reader import CONFIG_NAME, SpanReader
from densekd.training.checkpointing import CheckpointTrainer
from densekd.training.reader_trainer import ReaderDataset, ReaderExample
from densekd.training.span_reader_config import SpanReaderArgs

_LIBC: Any = None  # the C library once loaded (False where it has no malloc_trim)

_TARGETS = ("attention_mask", "token_mask", "start_targets", "end_targets")


class SpanReaderDataset(Dataset):
    """Tokenised examples, with the frozen layers' states cached (module docstring).

    Parameters
    ----------
    reader
        The reader whose tokenizer and frozen layers are used.
    examples
        ``(question, answers, passages)`` triples.
    chunk
        Questions tokenised and encoded together while caching.
    show_progress
        tqdm bar over the caching pass.
    """

    def __init__(self, reader: SpanReader, examples: Sequence[ReaderExample | tuple], chunk: int = 4,
                 show_progress: bool = False):
        examples = ReaderDataset(examples).examples  # its checks: every example has an answer and a passage
        self.items: list[dict[str, Tensor]] = []
        self.answerable = 0
        bar = tqdm(range(0, len(examples), chunk), desc="span reader inputs", unit="chunk", disable=not show_progress)
        for start in bar:
            part = examples[start:start + chunk]
            batch = reader.tokenize([e.question for e in part], [e.passages for e in part], [e.answers for e in part])
            hidden = None
            if reader.config.frozen_layers:
                B, k, L = batch.input_ids.shape
                hidden = reader.lower(batch.input_ids.view(B * k, L), batch.attention_mask.view(B * k, L),
                                      batch.token_type_ids.view(B * k, L)).view(B, k, L, -1)
            for b in range(len(part)):
                n = int(batch.passage_mask[b].sum())
                width = max(1, int(batch.attention_mask[b].sum(-1).max()))   # this question's longest pair
                item = {name: getattr(batch, name)[b, :n, :width].clone() for name in _TARGETS}
                if hidden is not None:
                    item["hidden"] = hidden[b, :n, :width].half().clone()
                else:
                    item["input_ids"] = batch.input_ids[b, :n, :width].clone()
                    item["token_type_ids"] = batch.token_type_ids[b, :n, :width].clone()
                self.answerable += bool(item["start_targets"].any())
                self.items.append(item)
            release_free_heap()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, Tensor]:
        return self.items[idx]


def release_free_heap() -> None:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Fragmentation keeps them otherwise: caching 300 squad-open questions grew the process by 1,141 MiB
    for 207 MiB of kept states, by 278 MiB with a trim after every chunk.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (musl, macOS: no such symbol)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def pad_collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack items, zero-padding passages ``k`` and tokens ``L`` to the batch's largest (padding is masked)."""
    if not items:
        raise ValueError("pad_collate got an empty batch")
    k = max(it["attention_mask"].shape[0] for it in items)
    L = max(it["attention_mask"].shape[1] for it in items)
    out = {}
    for name in items[0]:
        rows = []
        for it in items:
            t = it[name]
            pad = [0, 0] * (t.dim() - 2)          # trailing dims (hidden's H) stay
            rows.append(F.pad(t, pad + [0, L - t.shape[1], 0, k - t.shape[0]]))
        out[name] = torch.stack(rows)
    return out


class SpanReaderTrainer(CheckpointTrainer):
    """HF ``Trainer`` for a :class:`SpanReader`: ``compute_loss`` = the reader's pointer loss."""

    checkpoint_marker = CONFIG_NAME

    def __init__(self, model: SpanReader, args: SpanReaderArgs, data_collator: Any = None, **kwargs: Any):
        super().__init__(model, args, data_collator=data_collator or pad_collate, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
        """Shared-normalised pointer NLL of the micro-batch; ``num_items_in_batch`` is unused."""
        outputs = model(**inputs)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]


def build_span_training(examples: Sequence[ReaderExample | tuple], args: SpanReaderArgs,
                        reader: SpanReader | None = None, start: str | None = None,
                        show_progress: bool = False) -> tuple[SpanReaderTrainer, SpanReaderDataset]:
    """The reader, its cached dataset and its trainer, built the one way both entry points need.

    Seeds first (the new head is drawn from the global RNG), then caches the frozen layers' states with
    the reader in eval mode (the cached states are those of inference, without dropout).

    Parameters
    ----------
    examples, args
        As :func:`train_span_reader`.
    reader
        Optional reader to continue (its ``n_passages``, ``max_length`` and ``frozen_layers`` must equal
        the arguments'; it takes their ``loss_mode`` and ``select_weight``).
    start
        Without ``reader``: the checkpoint to load instead of ``args.model_name_or_path`` (a saved span
        reader keeps its own config).
    show_progress
        Progress bar over the caching pass.
    """
    set_seed(args.seed)
    if reader is None:
        reader = SpanReader.from_pretrained(args.model_name_or_path if start is None else start,
                                            **args.reader_overrides())
    else:  # a given reader keeps its architecture; the loss settings are the arguments'
        settings = args.reader_overrides()
        clash = {k: (getattr(reader.config, k), v) for k, v in settings.items()
                 if k in ("n_passages", "max_length", "frozen_layers") and getattr(reader.config, k) != v}
        if clash:
            raise ValueError(f"the reader's settings differ from the arguments' (reader, args): {clash}")
        reader.config.loss_mode, reader.config.select_weight = args.loss_mode, args.select_weight
    reader.eval()
    data = SpanReaderDataset(reader, examples, show_progress=show_progress)
    return SpanReaderTrainer(reader, args, train_dataset=data), data


def train_span_reader(examples: Sequence[ReaderExample | tuple], args: SpanReaderArgs,
                      reader: SpanReader | None = None,
                      show_progress: bool = False) -> tuple[SpanReader, list[dict[str, Any]]]:
    """Train a pointer reader, save it to ``args.output_dir``; return it (eval mode) and the trainer's log.

    Parameters
    ----------
    examples
        ``(question, answers, passages)`` triples.
    args
        :class:`SpanReaderArgs`.
    reader
        Optional reader to continue (:func:`build_span_training`); default
        ``SpanReader.from_pretrained(args.model_name_or_path, ...)``.
    show_progress
        Progress bar over the caching pass.

    Returns
    -------
    tuple
        ``(reader, log_history)``: the trained reader and ``trainer.state.log_history`` (loss per
        ``logging_steps``).
    """
    trainer, _ = build_span_training(examples, args, reader, show_progress=show_progress)
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer.model.eval(), trainer.state.log_history
