"""Cross-encoder (re-ranker): one HF transformer reads ``[CLS] query [SEP] passage [SEP]`` jointly.

Data contract
-------------
* ``tokenize_pairs(queries, passages)``: tokenizer output dict (``input_ids[B, L]``,
  ``attention_mask[B, L]``, ``token_type_ids[B, L]`` for BERT-likes), truncated "longest first" to
  ``max_length`` tokens in total, padded to the longest pair of the batch.
* ``forward(batch)``: **raw relevance logits** ``float[B]`` with gradients (one output unit,
  ``num_labels=1``). Never probabilities: a sigmoid or softmax is the consumer's choice (losses apply
  their own temperature), and logits keep the full ranking resolution.
* ``predict(pairs)``: inference, ``np.float32[N]`` raw logits in the order of the input.

Weights
-------
Any HF checkpoint loads through ``AutoModelForSequenceClassification(num_labels=1)``. A trained
re-ranker (``*ForSequenceClassification`` with one label) keeps its head; a plain encoder, such as
the bundled all-MiniLM-L6-v2 bi-encoder that ``path=None`` selects, gets a freshly initialised
classification head (transformers reports it as "newly initialized"), so its logits mean nothing
until the model is fine-tuned, e.g. with :func:`densekd.training.teacher_trainer.train_cross_encoder`.

On disk (``save_pretrained``)
-----------------------------
The HF model (``config.json`` + ``model.safetensors``) and tokenizer files, plus
``densekd_cross_encoder.json`` (``max_length``). The folder is also a valid HF / sentence-transformers
checkpoint: ``sentence_transformers.CrossEncoder(folder, activation_fn=torch.nn.Identity())`` returns
the same logits, because the saved tokenizer's ``model_max_length`` is set to ``max_length``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from densekd.data.io import DataFormatError, atomic_write
from densekd.encoders.dense import add_model_prefix, resolve_model_path

CONFIG_NAME = "densekd_cross_encoder.json"
DEFAULT_MAX_LENGTH = 256
# Pairs tokenised (and length-sorted) together in predict(). One chunk holds the token lists of this
# many pairs in Python memory (~50 MB at 256 tokens); sorting within 8k pairs already removes nearly all
# padding, while tokenising a multi-million-pair annotation run at once would need tens of GB.
TOKENIZE_CHUNK = 8192


class CrossEncoder(nn.Module):
    """A pointwise re-ranker: ``score(query, passage) = head(transformer([query; passage]))``.

    Parameters
    ----------
    model
        An HF ``*ForSequenceClassification`` model with ``num_labels == 1``.
    tokenizer
        Its tokenizer (a fast one for speed; slow tokenizers work).
    max_length
        Truncation length in tokens for the joint ``query + passage`` sequence.

    Examples
    --------
    >>> ce = CrossEncoder.from_pretrained("path/to/reranker")                     # doctest: +SKIP
    >>> ce.predict([("what is aspirin", "Aspirin is a drug."), ("what is aspirin", "Paris.")])  # doctest: +SKIP
    array([ 7.1, -9.3], dtype=float32)
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"CrossEncoder needs a one-logit head, the model has num_labels={model.config.num_labels}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        # Trainer checkpoints hold the inner HF model's keys (save_pretrained writes them); the Trainer
        # reloads them with load_state_dict(strict=False) on this wrapper, so map them instead of
        # letting the load silently skip every weight.
        self.register_load_state_dict_pre_hook(add_model_prefix)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, max_length: int | None = None) -> CrossEncoder:
        """Load a densekd folder, an HF re-ranker or any HF encoder checkpoint (new head, see module doc).

        Parameters
        ----------
        path
            Folder or hub id; ``None`` = bundled all-MiniLM-L6-v2 (an untrained head).
        max_length
            Truncation length in tokens; ``None`` = the value saved in a densekd folder, else 256.
        """
        root = resolve_model_path(path)
        saved: dict[str, Any] = {}
        cfg_file = Path(root) / CONFIG_NAME
        if cfg_file.is_file():
            saved = json.loads(cfg_file.read_text(encoding="utf-8"))
        config = AutoConfig.from_pretrained(root)
        trained_labels = config.num_labels if any(
            a.endswith("ForSequenceClassification") for a in (config.architectures or [])) else None
        if trained_labels not in (None, 1):
            # A two-class head (monoBERT style) would need "logit[1] - logit[0]"; refusing is clearer
            # than loading it with a resized, random head.
            raise DataFormatError(root, f"checkpoint has a {trained_labels}-label classification head; "
                                        "densekd cross-encoders need num_labels=1")
        p = Path(root)
        if p.is_dir() and not any((p / n).exists() for n in ("model.safetensors", "model.safetensors.index.json")):
            raise DataFormatError(p, "model folder has no safetensors weights (model.safetensors)")
        # safetensors only: never unpickle user-supplied weight files
        model = AutoModelForSequenceClassification.from_pretrained(root, num_labels=1, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(root)
        return cls(model, tokenizer, max_length or saved.get("max_length", DEFAULT_MAX_LENGTH))

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Forwarded to the HF model; called by the HF Trainer when ``gradient_checkpointing=True``."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    # ----------------------------------------------------------------------------- tokenising
    def _encode(self, queries: list[str], passages: list[str], **kwargs: Any) -> Any:
        # "longest_first" truncation (what sentence-transformers uses) trims the longer side token by
        # token, so a long passage never pushes a short query out of the window.
        return self.tokenizer(list(queries), list(passages), truncation="longest_first",
                              max_length=self.max_length, **kwargs)

    def tokenize_pairs(self, queries: list[str], passages: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise ``B`` pairs into padded tensors ``[B, L]`` (``L <= max_length``)."""
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        return dict(self._encode(queries, passages, padding=True, return_tensors="pt"))

    # ----------------------------------------------------------------------------- forward
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw logits ``float[B]`` for a tokenised batch (differentiable)."""
        return self.model(**batch).logits.squeeze(-1)

    # ----------------------------------------------------------------------------- inference
    @torch.inference_mode()
    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 64,
                show_progress: bool = True) -> np.ndarray:
        """Raw logits ``np.float32[N]`` for ``N`` ``(query, passage)`` pairs, in input order.

        Pairs are tokenised once per chunk of :data:`TOKENIZE_CHUNK`, then batched in order of
        decreasing token length, so each batch pads only to its own longest pair (the main CPU saving);
        results are written back to the input positions. Scores do not depend on input order or
        ``batch_size`` beyond float rounding of the batched kernels.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(pairs)
        out = np.empty(n, dtype=np.float32)
        was_training = self.training
        self.eval()
        bar = tqdm(total=n, desc="cross-encoder", unit="pair", disable=not show_progress)
        try:
            for start in range(0, n, TOKENIZE_CHUNK):
                chunk = pairs[start:start + TOKENIZE_CHUNK]
                out[start:start + len(chunk)] = self._predict_chunk(chunk, batch_size, bar)
        finally:
            bar.close()
            self.train(was_training)
        return out

    def _predict_chunk(self, pairs: list[tuple[str, str]], batch_size: int, bar: tqdm) -> np.ndarray:
        queries = [q for q, _ in pairs]
        passages = [p for _, p in pairs]
        # attention masks are rebuilt from lengths below; not materialising them saves memory and time
        enc = self._encode(queries, passages, return_attention_mask=False)
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] | None = enc.get("token_type_ids")
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        left = self.tokenizer.padding_side == "left"
        device = self.device
        out = np.empty(len(pairs), dtype=np.float32)
        for b in range(0, len(pairs), batch_size):
            idx = order[b:b + batch_size]
            width = int(lengths[idx[0]])                      # sorted: the first pair is the longest
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            token_types = np.zeros((len(idx), width), dtype=np.int64) if types is not None else None
            for row, i in enumerate(idx):
                span = slice(width - lengths[i], width) if left else slice(0, lengths[i])
                input_ids[row, span] = ids[i]
                if token_types is not None:
                    token_types[row, span] = types[i]
            positions = np.arange(width)
            if left:
                mask = positions[None, :] >= (width - lengths[idx])[:, None]
            else:
                mask = positions[None, :] < lengths[idx][:, None]
            batch = {"input_ids": torch.from_numpy(input_ids).to(device),
                     "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(device)}
            if token_types is not None:
                batch["token_type_ids"] = torch.from_numpy(token_types).to(device)
            out[idx] = self(batch).float().cpu().numpy()
            bar.update(len(idx))
        return out

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write the HF model (safetensors), tokenizer and ``densekd_cross_encoder.json`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        # Saved max length = truncation length, so other tools (sentence-transformers) that read the
        # tokenizer's model_max_length truncate exactly as densekd does.
        previous = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = self.max_length
        try:
            self.tokenizer.save_pretrained(out)
        finally:
            self.tokenizer.model_max_length = previous
        # the densekd config goes last: its presence marks a complete folder
        with atomic_write(out / CONFIG_NAME) as f:
            json.dump({"max_length": self.max_length}, f, indent=2)
