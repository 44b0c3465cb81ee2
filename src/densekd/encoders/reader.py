"""Fusion-in-Decoder reader (Izacard & Grave, 2021) wrapped around any HF seq2seq model.

Data contracts
--------------
* Inputs are ``questions: list[str]`` (``B``) and ``passages: list[list[PassageLike]]`` (one list per
  question; a ``PassageLike`` is a :class:`~densekd.data.types.Passage`, a ``(title, text)`` tuple or
  a bare text). Each passage is read as ``"question: {q} title: {t} context: {p}"`` (FiD's format)
  truncated to ``passage_max_length`` tokens; only the first ``n_passages`` of a list are read.
* :class:`FiDTokenizer` returns ``input_ids``, ``attention_mask``: ``long[B, k, L]`` with
  ``k = min(n_passages, longest list)``; ``passage_mask``: ``bool[B, k]`` (False = padding slot of a
  question with fewer passages; its tokens never reach the decoder); with answers, ``labels``:
  ``long[B, T]`` = answer tokens + EOS, padded with -100.
* Fusion: the encoder reads the ``B*k`` passages separately, ``[B*k, L] -> [B*k, L, H]``; the states
  of one question are concatenated, ``[B, k*L, H]``, with the mask ``[B, k*L]`` =
  ``attention_mask * passage_mask``, and the decoder cross-attends over all of them.
* ``forward`` returns a ``Seq2SeqLMOutput``; with ``labels`` its ``loss`` is the token-mean
  cross-entropy over the batch's non -100 labels (as FiD). ``log_likelihood`` gives the summed
  answer log-probability per question, ``float[B]`` (nats). ``generate`` returns answer strings.

Models
------
* A seq2seq checkpoint (T5, BART, a saved ``EncoderDecoderModel``) loads as is.
* An encoder-only checkpoint (BERT-like, e.g. the bundled all-MiniLM-L6-v2 when ``path=None``) is
  warm-started as a BERT2BERT ``EncoderDecoderModel`` (Rothe et al., 2020): encoder and decoder
  start from the checkpoint; the decoder's cross-attention and LM-head transform are new (random),
  so the reader means nothing until trained. Decoder start = ``[CLS]``, pad = ``[PAD]``, EOS =
  ``[SEP]``. ``decoder_layers=N`` keeps the first N decoder layers (CPU budgets).

Why a wrapper: FiD subclasses T5 and reshapes inside a patched encoder forward. Here the wrapper
calls the encoder, reshapes, and passes ``encoder_outputs=`` / ``attention_mask=`` of the fused
sequence to the unmodified model, so any seq2seq class works and no HF method is replaced.

On disk (``save_pretrained``): the HF model (``config.json``, ``model.safetensors``,
``generation_config.json``), tokenizer files and ``densekd_fid_reader.json`` (the
:class:`FiDReaderConfig`); the folder is also a plain HF seq2seq checkpoint. Weights are safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from densekd.data.io import DataFormatError, atomic_write
from densekd.data.types import Passage
from densekd.encoders.dense import add_model_prefix, resolve_model_path

CONFIG_NAME = "densekd_fid_reader.json"
IGNORE_INDEX = -100
PassageLike = Passage | tuple[str, str] | str


@dataclass
class FiDReaderConfig:
    """Settings of a :class:`FiDReader`.

    Attributes
    ----------
    model_name_or_path
        Start checkpoint (seq2seq or encoder-only); ``None`` = bundled all-MiniLM-L6-v2 (BERT2BERT).
    n_passages
        Passages read per question (the top ones of each list). 5-10 keeps CPU training feasible.
    passage_max_length
        Tokens per ``question + title + passage`` input (128-192 on CPU; FiD used 200-250).
    answer_max_length
        Answer tokens (EOS included) for training labels and the default generation length.
    decoder_layers
        Keep only the first N decoder layers at warm start; ``None`` = all. Ignored when loading a
        saved reader (its architecture is on disk).
    freeze_encoder
        Do not train the encoder (it then runs without autograd and without dropout). T5 shares
        its token embedding between encoder, decoder and LM head: that embedding freezes too.
    attn_implementation
        ``"eager"``, ``"sdpa"``...; ``None`` = the HF default. Scores from
        :mod:`densekd.teachers.fid` work with any; ``output_attentions=True`` needs ``"eager"``.
    """

    model_name_or_path: str | None = None
    n_passages: int = 5
    passage_max_length: int = 160
    answer_max_length: int = 24
    decoder_layers: int | None = None
    freeze_encoder: bool = False
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_passages", "passage_max_length", "answer_max_length"):
            value = getattr(self, name)
            if int(value) < (2 if name == "answer_max_length" else 1):  # an answer needs a token + EOS
                raise ValueError(f"{name} must be a positive integer (answer_max_length >= 2), got {value}")
        if self.decoder_layers is not None and self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1 or None, got {self.decoder_layers}")


def format_passage(question: str, passage: PassageLike) -> str:
    """FiD's input text for one passage.

    Examples
    --------
    >>> format_passage("who won?", ("Super Bowl 50", "The Broncos won."))
    'question: who won? title: Super Bowl 50 context: The Broncos won.'
    """
    if isinstance(passage, Passage):
        title, text = passage.title, passage.text
    elif isinstance(passage, tuple):
        title, text = passage
    else:
        title, text = "", passage
    return f"question: {question} title: {title} context: {text}"


@dataclass
class FiDTokenizer:
    """Picklable ``(questions, passages, answers) -> dict[str, Tensor]`` (module docstring layout).

    A dataclass rather than a bound :meth:`FiDReader.tokenize` so that dataloader workers pickle the
    tokenizer, not the model.
    """

    tokenizer: Any
    n_passages: int
    passage_max_length: int
    answer_max_length: int
    eos_token_id: int

    def __call__(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                 answers: Sequence[str] | None = None, n_passages: int | None = None) -> dict[str, Tensor]:
        if len(passages) != len(questions) or (answers is not None and len(answers) != len(questions)):
            raise ValueError(f"{len(questions)} questions, {len(passages)} passage lists"
                             + ("" if answers is None else f", {len(answers)} answers"))
        limit = n_passages or self.n_passages
        lists = [list(p)[:limit] for p in passages]
        if not lists or min(map(len, lists)) == 0:
            raise ValueError("every question needs at least one passage")
        k = max(map(len, lists))  # no slot is spent on passages that no question has
        # an absent passage is read as an empty one (real tokens, so the encoder is well defined)
        # and dropped from the fusion through passage_mask
        texts = [format_passage(q, plist[i] if i < len(plist) else "") for q, plist in zip(questions, lists)
                 for i in range(k)]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.passage_max_length,
                             return_tensors="pt")
        b = len(questions)
        out = {"input_ids": enc["input_ids"].view(b, k, -1), "attention_mask": enc["attention_mask"].view(b, k, -1),
               "passage_mask": torch.tensor([[i < len(p) for i in range(k)] for p in lists])}
        if answers is not None:
            out["labels"] = self.tokenize_answers(answers)
        return out

    def tokenize_answers(self, answers: Sequence[str]) -> Tensor:
        """``long[B, T]`` labels: answer tokens (no special tokens) + EOS, -100 padded."""
        ids = self.tokenizer(list(answers), add_special_tokens=False, truncation=True,
                             max_length=self.answer_max_length - 1)["input_ids"]
        ids = [row + [self.eos_token_id] for row in ids]
        labels = torch.full((len(ids), max(map(len, ids))), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(ids):
            labels[i, :len(row)] = torch.tensor(row)
        return labels


class FiDReader(nn.Module):
    """Fusion-in-Decoder: encode passages separately, decode over their concatenation.

    Parameters
    ----------
    model
        An HF seq2seq model (``get_encoder()``, ``prepare_decoder_input_ids_from_labels``, and a
        forward taking ``encoder_outputs=``), e.g. ``T5ForConditionalGeneration`` or
        ``EncoderDecoderModel``. Missing special-token ids are filled from ``tokenizer`` (BERT2BERT).
    tokenizer
        Its tokenizer.
    config
        :class:`FiDReaderConfig`; ``freeze_encoder`` is applied here.

    Examples
    --------
    >>> reader = FiDReader.from_pretrained(None, n_passages=5, decoder_layers=2)        # doctest: +SKIP
    >>> reader.generate(["who won super bowl 50?"], [[("SB 50", "The Broncos won.")]])  # doctest: +SKIP
    ['broncos']
    """

    def __init__(self, model: nn.Module, tokenizer: Any, config: FiDReaderConfig | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or FiDReaderConfig()
        _set_special_tokens(model, tokenizer)
        if self.config.freeze_encoder:
            self.model.get_encoder().requires_grad_(False)
        # Trainer checkpoints hold the inner HF model's keys; map them onto this wrapper on reload
        self.register_load_state_dict_pre_hook(add_model_prefix)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **overrides: Any) -> FiDReader:
        """Load a densekd reader folder, a seq2seq checkpoint, or warm-start from an encoder.

        Parameters
        ----------
        path
            Folder or hub id; ``None`` = bundled all-MiniLM-L6-v2 (BERT2BERT warm start).
        **overrides
            :class:`FiDReaderConfig` fields; they win over the values saved in a densekd folder.
        """
        root = resolve_model_path(path)
        cfg_file = Path(root) / CONFIG_NAME
        saved = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        config = FiDReaderConfig(**{**saved, **overrides, "model_name_or_path": None if path is None else str(path)})
        hf_config = AutoConfig.from_pretrained(root)
        if hf_config.is_encoder_decoder:
            kwargs: dict[str, Any] = {}
            if config.decoder_layers is not None and not saved:
                # T5 names it num_decoder_layers, BART-likes decoder_layers
                name = "num_decoder_layers" if hasattr(hf_config, "num_decoder_layers") else "decoder_layers"
                kwargs[name] = config.decoder_layers
            # safetensors only: never unpickle user-supplied weight files
            model = AutoModelForSeq2SeqLM.from_pretrained(root, use_safetensors=True, **kwargs)
        else:
            layers = {} if config.decoder_layers is None else {"decoder_num_hidden_layers": config.decoder_layers}
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                root, root, encoder_use_safetensors=True, decoder_use_safetensors=True, **layers)
        if config.attn_implementation is not None:
            model.set_attn_implementation(config.attn_implementation)
        return cls(model, AutoTokenizer.from_pretrained(root), config)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write the HF model (safetensors), tokenizer and ``densekd_fid_reader.json`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if not (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").is_file():
            raise DataFormatError(out, "transformers did not write safetensors weights")
        with atomic_write(out / CONFIG_NAME) as f:  # written last: marks a complete folder
            json.dump(dataclasses.asdict(self.config), f, indent=2)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> FiDReader:
        """``nn.Module.train``, but a frozen encoder stays in eval mode (fixed features, no dropout)."""
        super().train(mode)
        if self.config.freeze_encoder:
            self.model.get_encoder().eval()
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Forwarded to the HF model; called by the HF Trainer when ``gradient_checkpointing=True``."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    # ----------------------------------------------------------------------------- tokenising
    @property
    def tokenize_fn(self) -> FiDTokenizer:
        """A picklable tokenize function with this reader's settings (for collators)."""
        c = self.config
        return FiDTokenizer(self.tokenizer, c.n_passages, c.passage_max_length, c.answer_max_length,
                            int(self.model.generation_config.eos_token_id))

    def tokenize(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                 answers: Sequence[str] | None = None, n_passages: int | None = None) -> dict[str, Tensor]:
        """Tensors on this reader's device (layout in the module docstring); ``n_passages`` overrides."""
        batch = self.tokenize_fn(questions, passages, answers, n_passages)
        return {key: value.to(self.device) for key, value in batch.items()}

    # ----------------------------------------------------------------------------- model
    def encode(self, input_ids: Tensor, attention_mask: Tensor,
               passage_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode passages separately and fuse them per question.

        Parameters
        ----------
        input_ids, attention_mask
            ``long[B, k, L]``.
        passage_mask
            Optional ``bool[B, k]``; False slots are masked out of the fused sequence.

        Returns
        -------
        tuple[Tensor, Tensor]
            ``hidden[B, k*L, H]`` and ``mask[B, k*L]`` (long, 1 = real token of a real passage).
        """
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids/attention_mask must be [B, k, L], got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        b, k, length = input_ids.shape
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            hidden = self.model.get_encoder()(input_ids=input_ids.reshape(b * k, length),
                                              attention_mask=attention_mask.reshape(b * k, length),
                                              return_dict=True).last_hidden_state      # [B*k, L, H]
        mask = attention_mask if passage_mask is None else attention_mask * passage_mask[:, :, None].to(attention_mask)
        return hidden.reshape(b, k * length, hidden.shape[-1]), mask.reshape(b, k * length)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, passage_mask: Tensor | None = None,
                labels: Tensor | None = None, decoder_input_ids: Tensor | None = None,
                output_attentions: bool = False) -> Seq2SeqLMOutput:
        """Teacher-forced decoding over the fused passages.

        Parameters
        ----------
        input_ids, attention_mask, passage_mask
            As :meth:`encode`.
        labels
            ``long[B, T]`` targets (-100 = ignore); gives ``loss`` and, shifted, the decoder inputs.
        decoder_input_ids
            ``long[B, T]`` explicit decoder inputs (e.g. only the start token); needs no ``labels``.
        output_attentions
            Return attention probabilities (``cross_attentions``: per layer ``[B, heads, T, k*L]``);
            needs ``attn_implementation="eager"``.

        Returns
        -------
        Seq2SeqLMOutput
            ``logits[B, T, V]``, ``loss`` (token mean) when ``labels`` are given.
        """
        hidden, mask = self.encode(input_ids, attention_mask, passage_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("FiDReader.forward needs labels or decoder_input_ids")
            decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        # no decoder attention mask: labels are right-padded and the decoder is causal, so padding
        # only follows the real tokens and never changes their logits
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                         decoder_input_ids=decoder_input_ids, use_cache=False,
                         output_attentions=output_attentions, return_dict=True)
        if labels is None:
            return out
        # computed here, not by the model: EncoderDecoderModel's own loss is deprecated and the
        # models disagree on reductions; float() keeps the softmax exact under autocast
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return Seq2SeqLMOutput(loss=loss, **out)

    def log_likelihood(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                       passage_mask: Tensor | None = None) -> Tensor:
        """Summed log-probability of each question's ``labels``, ``float[B]`` (nats, EOS included)."""
        logits = self(input_ids, attention_mask, passage_mask, labels=labels).logits.float()   # [B, T, V]
        real = labels != IGNORE_INDEX
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        return (token_lp * real).sum(dim=-1)

    def loss(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
             answers: Sequence[str]) -> Tensor:
        """Teacher-forcing loss from texts (token-mean cross-entropy, differentiable)."""
        return self(**self.tokenize(questions, passages, answers)).loss

    @torch.no_grad()
    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                 max_new_tokens: int | None = None, num_beams: int = 1, n_passages: int | None = None) -> list[str]:
        """Answer strings (greedy or beam search over the fused passages), special tokens removed."""
        batch = self.tokenize(questions, passages, n_passages=n_passages)
        was_training = self.training
        self.eval()
        try:
            hidden, mask = self.encode(batch["input_ids"], batch["attention_mask"], batch["passage_mask"])
            ids = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                                      max_new_tokens=max_new_tokens or self.config.answer_max_length,
                                      num_beams=num_beams, do_sample=False)
        finally:
            self.train(was_training)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _set_special_tokens(model: nn.Module, tokenizer: Any) -> None:
    """Fill decoder-start / pad / EOS ids that a warm-started BERT2BERT lacks ([CLS] / [PAD] / [SEP])."""
    ids = {"decoder_start_token_id": tokenizer.cls_token_id if tokenizer.cls_token_id is not None
           else tokenizer.bos_token_id,
           "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id}
    for name, default in ids.items():
        # a value already set by the checkpoint (T5: start = pad = 0, EOS = 1) wins
        value = getattr(model.generation_config, name, None)
        if value is None:
            value = getattr(model.config, name, None)
        if value is None:
            value = default
        if value is None:
            raise ValueError(f"cannot determine {name}: set it on the model config")
        value = value[0] if isinstance(value, list) else value
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)
