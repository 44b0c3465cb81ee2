"""Train a tiny DenseEncoder with DistillTrainer for 4 steps and dump the per-step losses (not a test).

Run by ``test_robust_ddp.py`` once under ``torchrun --nproc_per_node 2`` (gloo, per-device batch 2) and
once as one process (per-device batch 4): same global batch, same data order
(``train_sampling_strategy="sequential"``: accelerate hands rank ``r`` the ``r``-th per-device slice of
every global batch, which is exactly the single-process batch), dropout off, fixed seed.

Usage: python ddp_train_script.py MODEL_DIR BEIR_DIR OUT_DIR PER_DEVICE_BATCH
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import torch

torch.set_num_threads(1)

from densekd.data.beir import load_corpus, load_qrels, load_queries  # noqa: E402
from densekd.data.types import TrainGroup  # noqa: E402
from densekd.encoders.dense import DenseEncoder  # noqa: E402
from densekd.training.config import DistillConfig, default_loss_spec  # noqa: E402
from densekd.training.dataset import TrainGroupDataset  # noqa: E402
from densekd.training.trainer import DistillTrainer  # noqa: E402

N_GROUPS, STEPS, GROUP_SIZE = 16, 4, 2


def teacher_score(qid: str, pid: str) -> float:
    """A deterministic stand-in teacher logit in [-4, 4)."""
    return (zlib.crc32(f"{qid}|{pid}".encode()) % 800) / 100.0 - 4.0


def build_groups(beir: Path) -> tuple[list[TrainGroup], dict, dict]:
    corpus = load_corpus(beir / "corpus.jsonl")
    queries = load_queries(beir / "queries.jsonl")
    qrels = load_qrels(beir / "qrels" / "train.tsv")
    qids = sorted(qrels)
    groups = []
    for i in range(N_GROUPS):
        qid = qids[i % len(qids)]
        pos = sorted(p for p, rel in qrels[qid].items() if rel > 0)
        neg = [p for p in sorted(corpus) if p not in qrels[qid]]
        groups.append(TrainGroup(qid, pos, neg, {p: teacher_score(qid, p) for p in pos + neg}))
    return groups, queries, corpus


def main(model_dir: str, beir: str, out_dir: str, per_device_batch: int) -> None:
    out = Path(out_dir)
    groups, queries, corpus = build_groups(Path(beir))
    args = DistillConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=per_device_batch, max_steps=STEPS,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, seed=0, data_seed=0,
        group_size=GROUP_SIZE, use_in_batch_negatives=True, loss=default_loss_spec(),
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    encoder = DenseEncoder.from_pretrained(model_dir, query_max_length=16, passage_max_length=32)
    dataset = TrainGroupDataset(groups, queries, corpus, group_size=GROUP_SIZE, seed=0)
    trainer = DistillTrainer(model=encoder, args=args, train_dataset=dataset)
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        logs = [h for h in trainer.state.log_history if "loss" in h]
        result = {
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "steps": [h["step"] for h in logs],
            "loss": [h["loss"] for h in logs],
            "loss_kl": [h.get("loss_kl") for h in logs],
            "loss_contrastive": [h.get("loss_contrastive") for h in logs],
        }
        torch.save({k: v.detach().clone() for k, v in encoder.state_dict().items()}, out / "weights.pt")
        (out / "losses.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
