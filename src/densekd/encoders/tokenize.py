"""Tokenisation shared by the bi-encoders (dense and late-interaction) and the training collator.

Both functions take an HF tokenizer and plain texts; a non-empty ``prefix`` is prepended to every
text before tokenising. No model code is imported here, so the picklable training collator can use it
without loading ``transformers``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def tokenize_texts(tokenizer: Any, texts: Sequence[str], prefix: str, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` for training: prefix, truncation at ``max_length``, padding to the longest.

    Parameters
    ----------
    tokenizer
        An HF tokenizer.
    texts
        ``N`` texts.
    prefix
        Prepended to every text (``""`` = none).
    max_length
        Truncation length in tokens.

    Returns
    -------
    dict[str, torch.Tensor]
        Tokenizer output (``input_ids[N, L]``, ``attention_mask[N, L]``, ...) as a plain dict.
    """
    return dict(tokenizer(_prefixed(texts, prefix), padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt"))


def length_sorted_batches(tokenizer: Any, texts: Sequence[str], prefix: str, max_length: int,
                          batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Padded inference batches of ``texts`` in order of decreasing token length.

    Everything is tokenised once (fast Rust tokenizer), then sorted by *token* length so that each
    batch pads to nearly its own length: the main CPU saving over padding to the batch maximum.

    Parameters
    ----------
    tokenizer, texts, prefix, max_length
        As in :func:`tokenize_texts`.
    batch_size
        Texts per batch.

    Yields
    ------
    tuple[np.ndarray, dict[str, torch.Tensor]]
        ``(idx, batch)``: the positions in ``texts`` of the batch's rows (int ``[b]``) and the padded
        tokenizer output for them (``input_ids[b, L]``, ``attention_mask[b, L]``, ...).
    """
    enc = tokenizer(_prefixed(texts, prefix), truncation=True, max_length=max_length)
    order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        features = [{k: enc[k][i] for k in enc.keys()} for i in idx]
        yield idx, dict(tokenizer.pad(features, return_tensors="pt"))


def _prefixed(texts: Sequence[str], prefix: str) -> list[str]:
    """``texts`` as a list, each with ``prefix`` in front (``""`` = unchanged)."""
    return [prefix + t for t in texts] if prefix else list(texts)
