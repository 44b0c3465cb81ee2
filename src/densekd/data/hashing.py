"""Stable digests of files, values and weights: the one place cache keys get their hashes from.

Every string here feeds a cache key under ``~/.cache/densekd`` or an artefact's manifest (pipeline
steps, teacher annotations, embedding stores, ONNX exports), so the byte layout of each hash is frozen:
``tests/data/test_hashing.py`` pins known outputs. Change one only together with a format version.

* :func:`file_digest`: SHA-256 over the bytes of one or more files (data inputs, weights on disk).
* :func:`fingerprint_parts`: SHA-256 of ``repr`` of values, length-prefixed so no split is ambiguous.
* :func:`fingerprint_state_dict`: SHA-256 of tensors by name, dtype, shape and bytes (teachers).
* :func:`weights_digest`: BLAKE2b-128 of tensors by name and bytes (dense encoders, ONNX exports).
* :func:`seeded_hash`: a 64-bit integer from ``(seed, key)``, for splits and draws that must not depend
  on the order or number of keys (fold assignment, pseudo-query sampling).

torch is imported only inside the tensor helpers, so the data layer stays importable without it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["file_digest", "fingerprint_parts", "fingerprint_state_dict", "seeded_hash", "tensor_bytes",
           "weights_digest"]

_READ_BLOCK = 1 << 20  # 1 MiB: streaming keeps multi-GB checkpoints out of memory


def file_digest(*paths: str | os.PathLike, length: int | None = None) -> str:
    """SHA-256 (hex) over the bytes of ``paths``, concatenated in order and read in 1 MiB blocks.

    Parameters
    ----------
    paths
        One or more files.
    length
        Keep the first ``length`` hex characters (``None``: all 64).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_digest(p, length=16)
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(_READ_BLOCK):
                digest.update(block)
    return digest.hexdigest()[:length]


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


def seeded_hash(seed: int, key: str) -> int:
    """The first 8 bytes of ``sha256(f"{seed}:{key}")`` as a big-endian integer in ``[0, 2**64)``.

    Unlike ``hash()`` it is the same on every machine and run, and unlike a seeded RNG each key's value
    is independent of the other keys.

    Examples
    --------
    >>> seeded_hash(0, "p1")
    18192574648761365533
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def tensor_bytes(t: Any) -> np.ndarray:
    """The raw bytes of a torch tensor as ``np.uint8[nbytes]`` (CPU, contiguous, any dtype).

    A uint8 view works for every dtype, bfloat16 included (numpy has no bfloat16).
    """
    import torch  # local: the data layer does not need torch

    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()


def fingerprint_state_dict(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of tensors by name, dtype, shape and bytes; independent of the file format.

    Hashes about 0.5-1 GB/s on one core, i.e. well under a second for MiniLM-size teachers.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(tensor_bytes(t))
    return digest.hexdigest()


def weights_digest(state_dicts: Iterable[Mapping[str, Any]]) -> str:
    """BLAKE2b-128 (hex) of the tensors of ``state_dicts`` in turn, each by sorted name and raw bytes.

    Hashing the weights (not a checkpoint path) means a fine-tuned model never reuses what was cached
    for its starting point.
    """
    h = hashlib.blake2b(digest_size=16)
    for state in state_dicts:
        for name, tensor in sorted(state.items()):
            h.update(name.encode("utf-8"))
            h.update(tensor_bytes(tensor).tobytes())
    return h.hexdigest()
