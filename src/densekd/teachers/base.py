"""The teacher contract and the fingerprint helpers that make teacher scores cacheable.

Contract
--------
A teacher is anything with

* ``score(pairs, batch_size, show_progress) -> np.float32[N]``: one **raw logit** per
  ``(query_text, passage_text)`` pair, in input order. Never probabilities: losses apply their own softmax and temperature, and a
  sigmoid would squash the top of the ranking that distillation cares most about.
* ``fingerprint: str``: a stable id of everything that changes the scores (weights, truncation
  length, tokenizer). Annotation caches are keyed by it, so equal fingerprints must mean equal scores
  and any change of weights or settings must change it.

Fingerprints are hex SHA-256 digests built with :func:`fingerprint_parts` from
:func:`fingerprint_file` (weights on disk) or :func:`fingerprint_state_dict` (weights in memory).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch

_READ_BLOCK = 1 << 20  # 1 MiB: streaming keeps multi-GB checkpoints out of memory


@runtime_checkable
class Teacher(Protocol):
    """Scores ``(query, passage)`` text pairs with raw logits; see the module docstring."""

    @property
    def fingerprint(self) -> str:
        """Stable id of weights + settings (a cache key)."""
        ...

    def score(self, pairs: list[tuple[str, str]], batch_size: int = 64,
              show_progress: bool = False) -> np.ndarray:
        """Raw logits ``np.float32[N]`` for ``N`` pairs, in input order."""
        ...


def fingerprint_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> fingerprint_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of tensors by name, dtype, shape and bytes; independent of the file format.

    Hashes about 0.5-1 GB/s on one core, i.e. well under a second for MiniLM-size teachers.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # a uint8 view gives the raw bytes of any dtype (numpy has no bfloat16)
        digest.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprint_parts(*parts: object) -> str:
    """SHA-256 (hex) of ``repr`` of each part, unambiguously separated.

    Examples
    --------
    >>> fingerprint_parts("cross-encoder", 256) == fingerprint_parts("cross-encoder", 256)
    True
    >>> fingerprint_parts("a", "bc") == fingerprint_parts("ab", "c")
    False
    """
    digest = hashlib.sha256()
    for part in parts:
        text = repr(part).encode()
        digest.update(len(text).to_bytes(8, "little") + text)
    return digest.hexdigest()
