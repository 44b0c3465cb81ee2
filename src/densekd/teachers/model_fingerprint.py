"""Fingerprints of teachers composed over an in-memory model: weights, settings and tokenizer.

Every teacher hashes its weights from memory (so a model fine-tuned or edited in place gets a new
fingerprint even before it is saved) with :func:`~densekd.teachers.base.fingerprint_state_dict`.
:class:`CachedFingerprint` keeps the result until a weight tensor or a setting changes, checked
through the tensors' in-place version counters and storage pointers, so asking for a fingerprint
repeatedly (cache keys, file headers, log lines) hashes the weights once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from torch import nn

from densekd.teachers.base import fingerprint_parts

__all__ = ["CachedFingerprint", "tokenizer_state"]


class CachedFingerprint:
    """A fingerprint of ``module``'s weights and ``settings``, recomputed only when either changes.

    Examples
    --------
    >>> cache = CachedFingerprint()
    >>> layer = torch.nn.Linear(2, 1)
    >>> cache.get(layer, (1,), lambda state: "first")
    'first'
    >>> cache.get(layer, (1,), lambda state: "not called: nothing changed")
    'first'
    >>> with torch.no_grad():
    ...     _ = layer.bias.add_(1.0)
    >>> cache.get(layer, (1,), lambda state: "recomputed")
    'recomputed'
    """

    def __init__(self) -> None:
        self._cached: tuple[tuple, str] | None = None

    def get(self, module: nn.Module, settings: Hashable,
            compute: Callable[[Mapping[str, torch.Tensor]], str]) -> str:
        """``compute(module.state_dict())``, cached on ``settings`` and the state's tensors.

        Parameters
        ----------
        module
            The model whose ``state_dict()`` the fingerprint hashes.
        settings
            Everything else the fingerprint covers that can change in place (e.g. ``max_length``).
        compute
            ``state -> hex digest``; called again only after a change.
        """
        state = module.state_dict()
        # Cheap change detector: every in-place update (optimizer step, load_state_dict, ``+=``) bumps a
        # tensor's version counter, and reassigning a parameter changes its storage pointer.
        key = (settings, tuple((n, t.data_ptr(), t._version) for n, t in state.items()))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, compute(state))
        return self._cached[1]


def tokenizer_state(tokenizer: Any) -> str:
    """A digest of what decides tokenisation, excluding per-call truncation/padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The fast tokenizer's JSON also records the truncation/padding of the *last call*, which
        # would make the fingerprint change after the first predict(); those keys are dropped.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return fingerprint_parts(type(tokenizer).__name__, tokenizer.padding_side, tokenizer.truncation_side, text)
