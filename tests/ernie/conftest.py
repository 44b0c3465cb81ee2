"""Fixtures for the ERNIE-Search / late-interaction tests: tiny models (toy data and groups: tests/conftest.py)."""

from __future__ import annotations

import pytest



@pytest.fixture
def ernie_model(tiny_bert_path):
    """A fresh ErnieSearchModel on the tiny BERT with a seeded 16-d ColBERT head, in eval mode."""
    import torch

    from densekd.encoders.ernie import ErnieSearchModel

    torch.manual_seed(0)
    return ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16).eval()


@pytest.fixture
def colbert(tiny_bert_path):
    """A fresh LateInteractionEncoder on the tiny BERT with a seeded 16-d head, in eval mode."""
    import torch

    from densekd.encoders.late_interaction import LateInteractionEncoder

    torch.manual_seed(0)
    return LateInteractionEncoder.from_pretrained(tiny_bert_path, dim=16).eval()
