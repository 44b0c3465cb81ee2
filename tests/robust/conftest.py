"""Fixtures of the robustness suite: a dropout-free copy of the tiny BERT.

Plain helpers (``HERE``, ``free_port``) live in ``_robust_helpers``: several test folders have a
``conftest.py``, so ``from conftest import ...`` would depend on which one Python imported first.
"""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory, tiny_bert_path) -> str:
    """``tiny_bert_path`` with hidden and attention dropout set to 0 in its config (deterministic training)."""
    out = tmp_path_factory.mktemp("tiny_bert_no_dropout") / "model"
    shutil.copytree(tiny_bert_path, out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg_path.write_text(json.dumps(cfg))
    return str(out)
