"""Extractive pointer reader: a cross-encoder with start/end heads, shared-normalised over a question's passages.

Why this reader (and not only the generative FiD reader): on CPU the only generative reader is a
BERT2BERT warm start whose decoder is new; trained on squad-open it learns the answers by heart and
its cross-attention points at answer passages no more often than chance. A pointer reader has no
vocabulary to memorise into: its output distribution is over the tokens of the passages it reads
(:mod:`densekd.losses.span`), so the only way to lower its loss is to find answer occurrences, and the
mass each passage receives is a relevance score in the sense of FiD's attention mass.

Data contracts
--------------
* Inputs: :func:`~densekd.encoders.span_inputs.tokenize_pairs` (``[B, k, L]`` pairs, pointer
  ``token_mask``, answer targets).
* ``forward`` returns ``{"start_logits", "end_logits"}`` ``float[B, k, L]`` (raw; tokens outside
  ``token_mask`` are *not* masked here), ``"select_logits"`` ``float[B, k]`` (a passage-selection logit
  read at each pair's first token, as DPR's reader selects passages) and ``"loss"`` when targets are
  given: the pointer loss (shared normalisation over all ``k * L`` tokens of a question;
  :func:`~densekd.losses.span.span_pointer_loss`) + ``select_weight`` x the selection loss (softmax over
  the question's passages, marginal over the passages holding an answer occurrence).
* :func:`passage_scores` -> ``float[B, k]`` **raw logits**: ``"mass"`` = logsumexp of the passage's
  start logits (softmax over passages = the pointer's mass per passage, because the shared normaliser
  cancels), ``"span"`` = the best span's ``start + end`` logit, ``"select"`` = the selection logit.
  Padding passages score ``-inf`` (``mass``, ``span``).
* Frozen layers: with ``frozen_layers = f`` the embeddings and the first ``f`` transformer layers never
  train, so their output (``hidden``, :meth:`SpanReader.lower`) can be computed once and cached;
  :meth:`SpanReader.upper` runs the remaining layers and the head from it. ``f > 0`` needs a BERT-like
  encoder (``embeddings`` + ``encoder.layer``); ``f = 0`` runs any HF encoder's own forward.

On disk: the HF encoder (``config.json``, ``model.safetensors``), tokenizer files, ``span_head.safetensors``
and ``densekd_span_reader.json`` (:class:`SpanReaderConfig`). Nothing is pickled.
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
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from densekd.data.io import DataFormatError, atomic_path, atomic_write
from densekd.encoders.dense import resolve_model_path
from densekd.encoders.span_inputs import PassageLike, SpanInputs, tokenize_pairs
from densekd.losses.span import SPAN_MODES, pointer_nll, span_pointer_loss

CONFIG_NAME = "densekd_span_reader.json"
HEAD_NAME = "span_head.safetensors"
SCORINGS = ("mass", "span", "select")


@dataclass
class SpanReaderConfig:
    """Settings of a :class:`SpanReader` (each one changes what it reads or learns)."""

    n_passages: int = 5
    max_length: int = 192
    frozen_layers: int = 4
    max_answer_tokens: int = 16
    loss_mode: str = "marginal"
    select_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.n_passages < 1 or self.max_length < 16 or self.max_answer_tokens < 1 or self.frozen_layers < 0:
            raise ValueError(f"n_passages >= 1, max_length >= 16, max_answer_tokens >= 1 and frozen_layers >= 0 "
                             f"are required: {self}")
        if self.loss_mode not in SPAN_MODES:
            raise ValueError(f"loss_mode must be one of {SPAN_MODES}, got {self.loss_mode!r}")
        if self.select_weight < 0:
            raise ValueError(f"select_weight must be >= 0, got {self.select_weight}")


class SpanReader(nn.Module):
    """HF encoder + ``Linear(H, 3)`` start / end / passage-selection head (module docstring).

    Parameters
    ----------
    model
        An HF encoder (``AutoModel``).
    tokenizer
        Its fast tokenizer.
    config
        :class:`SpanReaderConfig`.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, config: SpanReaderConfig | None = None):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.config = config or SpanReaderConfig()
        self.head = nn.Linear(model.config.hidden_size, 3)
        n_layers = model.config.num_hidden_layers
        if self.config.frozen_layers:
            if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
                raise ValueError("frozen_layers > 0 needs a BERT-like encoder (embeddings + encoder.layer)")
            if self.config.frozen_layers > n_layers:
                raise ValueError(f"frozen_layers={self.config.frozen_layers} > the model's {n_layers} layers")
            for p in model.embeddings.parameters():
                p.requires_grad_(False)
            for layer in model.encoder.layer[:self.config.frozen_layers]:
                for p in layer.parameters():
                    p.requires_grad_(False)

    # ----- io
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **overrides: Any) -> SpanReader:
        """A saved reader folder (its config; ``overrides`` ignored), or an encoder checkpoint with a new head."""
        folder = resolve_model_path(path)
        saved = Path(folder) / CONFIG_NAME
        if saved.exists():
            try:
                config = SpanReaderConfig(**json.loads(saved.read_text()))
            except (ValueError, TypeError) as e:
                raise DataFormatError(saved, f"not a span reader config: {e}") from e
        else:
            config = SpanReaderConfig(**{k: v for k, v in overrides.items() if v is not None})
        reader = cls(AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), config)
        if saved.exists():
            reader.head.load_state_dict(load_file(str(Path(folder) / HEAD_NAME)))
        return reader

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the encoder, tokenizer, head and config (safetensors; module docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        with atomic_path(folder / HEAD_NAME) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, str(tmp))
        with atomic_write(folder / CONFIG_NAME) as f:
            json.dump(dataclasses.asdict(self.config), f, indent=1)

    # ----- inputs
    def tokenize(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                 answers: Sequence[Sequence[str]] | None = None) -> SpanInputs:
        """:func:`~densekd.encoders.span_inputs.tokenize_pairs` with this reader's settings."""
        return tokenize_pairs(self.tokenizer, questions, passages, answers, self.config.n_passages,
                              self.config.max_length)

    # ----- model
    @staticmethod
    def _additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``[N, L]`` 0/1 -> ``[N, 1, 1, L]`` additive mask (0 keep, dtype-min drop), as BERT layers take it."""
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def _run_layers(self, hidden: Tensor, attention_mask: Tensor, layers: Sequence[nn.Module]) -> Tensor:
        mask = self._additive_mask(attention_mask, hidden.dtype)
        for layer in layers:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def lower(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """The frozen part: ``[N, L]`` ids -> ``float[N, L, H]`` states after ``frozen_layers`` layers (no grad)."""
        f = self.config.frozen_layers
        if not f:
            raise ValueError("lower() needs frozen_layers > 0")
        with torch.no_grad():
            hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            return self._run_layers(hidden, attention_mask, self.model.encoder.layer[:f])

    def upper(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The trained part: cached ``[N, L, H]`` states -> ``float[N, L, 3]`` start/end/select logits."""
        hidden = self._run_layers(hidden.float(), attention_mask, self.model.encoder.layer[self.config.frozen_layers:])
        return self.head(hidden)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, hidden: Tensor | None = None,
                token_mask: Tensor | None = None, start_targets: Tensor | None = None,
                end_targets: Tensor | None = None) -> dict[str, Tensor]:
        """Pointer logits ``[B, k, L]`` from ids (or cached ``hidden`` ``[B, k, L, H]``); loss with targets."""
        B, k, L = attention_mask.shape
        flat_mask = attention_mask.reshape(B * k, L)
        if hidden is not None:
            logits = self.upper(hidden.reshape(B * k, L, -1), flat_mask)
        elif self.config.frozen_layers:
            ids = input_ids.reshape(B * k, L)
            types = None if token_type_ids is None else token_type_ids.reshape(B * k, L)
            logits = self.upper(self.lower(ids, flat_mask, types), flat_mask)
        else:
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids.reshape(B * k, L)}
            states = self.model(input_ids=input_ids.reshape(B * k, L), attention_mask=flat_mask,
                                **kwargs).last_hidden_state
            logits = self.head(states)
        start, end, select = logits.float().reshape(B, k, L, 3).unbind(-1)
        out = {"start_logits": start, "end_logits": end, "select_logits": select[..., 0]}
        if start_targets is not None and token_mask is not None:
            out["loss"] = span_pointer_loss(start.reshape(B, -1), end.reshape(B, -1), start_targets.reshape(B, -1),
                                            end_targets.reshape(B, -1), token_mask.reshape(B, -1).bool(),
                                            self.config.loss_mode)
            if self.config.select_weight:
                nll = pointer_nll(out["select_logits"], start_targets.bool().any(-1), attention_mask[..., 0].bool(),
                                  "marginal")
                answerable = ~torch.isnan(nll)
                if answerable.any():
                    out["loss"] = out["loss"] + self.config.select_weight * nll[answerable].mean()
        return out


def span_matrix(start: Tensor, end: Tensor, token_mask: Tensor, max_tokens: int) -> Tensor:
    """``start_i + end_j`` for every allowed span (``i <= j < i + max_tokens``, both in ``token_mask``).

    ``[..., L]`` inputs -> ``float[..., L, L]``; disallowed spans are ``-inf``.
    """
    L = start.shape[-1]
    band = torch.ones(L, L, dtype=torch.bool, device=start.device).triu().tril(max_tokens - 1)
    ok = band & token_mask[..., :, None].bool() & token_mask[..., None, :].bool()
    return (start[..., :, None] + end[..., None, :]).masked_fill(~ok, float("-inf"))


def passage_scores(start: Tensor, end: Tensor, token_mask: Tensor, how: str = "mass",
                   max_tokens: int = 16, select: Tensor | None = None) -> Tensor:
    """One raw logit per passage (module docstring): ``[B, k, L]`` (``select``: ``[B, k]``) -> ``float[B, k]``."""
    if how == "select":
        if select is None:
            raise ValueError("passage scoring 'select' needs the select logits")
        return select.float()
    if how == "mass":
        return start.float().masked_fill(~token_mask.bool(), float("-inf")).logsumexp(dim=-1)
    if how == "span":
        return span_matrix(start.float(), end.float(), token_mask, max_tokens).flatten(-2).max(dim=-1).values
    raise ValueError(f"passage scoring must be one of {SCORINGS}, got {how!r}")


def best_spans(inputs: SpanInputs, start: Tensor, end: Tensor, max_tokens: int,
               spans: Tensor | None = None) -> list[tuple[str, int, float]]:
    """Per question the best span over all its passages: ``(answer text, passage index, start+end logit)``.

    ``spans``: ``span_matrix(start, end, inputs.token_mask, max_tokens)`` (``float[B, k, L, L]``) when the
    caller has it already (padded passages have no text tokens, so they hold no span either way).
    """
    scores = spans if spans is not None else span_matrix(start.float(), end.float(), inputs.token_mask, max_tokens)
    L = scores.shape[-1]
    out = []
    for b in range(scores.shape[0]):
        flat = scores[b].flatten()
        best = int(flat.argmax())
        value = float(flat[best])
        if value == float("-inf"):
            out.append(("", -1, value))
            continue
        i, rest = divmod(best, L * L)
        s, e = divmod(rest, L)
        a, z = inputs.offsets[b][i][s][0], inputs.offsets[b][i][e][1]
        out.append((inputs.texts[b][i][a:z].strip(), i, value))
    return out
