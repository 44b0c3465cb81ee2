"""Benchmark: cross-encoder -> MiniLM distillation on SciFact dev (trained on train), densekd vs sentence-transformers.

Usage::

    python bench/distill_vs_st.py                          # full run (hours on 2 CPU cores; steps cached)
    python bench/distill_vs_st.py --smoke                  # tiny end-to-end check -> bench/results/smoke/
    python bench/distill_vs_st.py --set student.seed=7 --rerank-depth 30 --retrain

Rows (SciFact dev, nDCG@10, MRR@10, R@100, MAP):

* ``bm25``: the pipeline's cached BM25 run (bm25s, stemmer + stopwords).
* ``zeroshot``: all-MiniLM-L6-v2 as is (cached corpus embeddings).
* ``teacher_rerank``: the teacher signal the students are distilled from (``teacher.fusion``: the
  cross-encoder's logits, fused with BM25 / dense scores when configured) reranking BM25's top
  ``--rerank-depth`` (BM25's order below it, so R@100 is comparable). Distillation figures count only
  when it beats BM25 on nDCG@10; otherwise the JSON carries ``distillation_figures_count: false`` and a
  ``warning``. With a fused signal, ``teacher_rerank_cross_encoder`` is the cross-encoder alone.
* ``contrastive``, ``kl_kd``, ``margin_mse_kd``: densekd students, each trained from MiniLM through the
  pipeline's ``train_student`` (own output folder, cached on its key) with the same batch size, group
  size, steps, max lengths, learning rate, warm-up and seed; losses ``{"contrastive": {}}`` on the mined
  groups (no teacher), the config's ``kl`` entry alone (weight 1, no contrastive term), and
  ``{"margin_mse": {}}``. Each is evaluated with a full corpus encoding (``steps.corpus_embeddings``).
* ``contrastive_query_only``, ``kl_kd_query_only``, ``margin_mse_kd_query_only``: the same three losses in
  densekd's cheap ``query_only`` mode (passage tower frozen, the cached zero-shot corpus vectors serve
  training and search; ``--query-only-epochs``, ``--query-only-lr``); sentence-transformers has no such
  mode, so these rows have no ST peer.
* ``st_kl_kd``, ``st_margin_mse_kd``: the same two distillations with sentence-transformers'
  ``SentenceTransformerTrainer`` and its ``DistillKLDivLoss`` / ``MarginMSELoss``. Their examples are
  drawn by densekd's ``TrainGroupDataset`` (same seed, same per-epoch negatives), so both libraries see
  identical (query, positive, G-1 negatives, teacher scores) instances; the order within an epoch is
  each trainer's own seeded shuffle. Evaluated with ``SentenceTransformer.encode`` + densekd
  ``FaissIndex`` (Flat) + ``densekd.eval.metrics.evaluate``.

Loss equivalence. densekd's KL with ``student_temperature=Ts, scale_by_t2=false`` (the config) equals
ST's ``DistillKLDivLoss`` with temperature 1 on the scores ``cos / Ts`` (passed as ``similarity_fct``),
because ST always multiplies by ``student_temperature ** 2``; with ``scale_by_t2=true`` it is ST's
``student_temperature=Ts`` directly. MarginMSE compares raw score margins, and a cosine student
(margins in [-2, 2]) cannot match raw teacher-logit margins, while densekd's ``margin_mse`` has no scale
option: both libraries therefore get the teacher logits divided by ``--margin-scale`` (default
``1 / Ts`` = 20, the scale the KL row puts on the student). That equals a student scale of 20 on raw
logits up to a constant factor ``1 / 20**2`` on the loss; ST's default dot-product on its normalised
MiniLM is the same cosine densekd uses.

Throughput: training instances (queries) per second of the ``trainer.train()`` call alone, densekd over
ST, per loss and over both (``train_throughput_ratio_vs_sentence_transformers``); a densekd student reused
from an earlier run keeps that run's timing (``train_timings_same_run: false``; ``--retrain`` forces
retraining). Cross-encoder scoring: the same ``--ce-pairs`` (query, passage) pairs of the dev BM25 run,
densekd ``CrossEncoder.predict`` vs ``sentence_transformers.CrossEncoder.predict`` on the saved teacher
(raw logits, same batch size), interleaved chunk by chunk (``ce_scoring_ratio_vs_sentence_transformers``).

Writes bench/results/distill_vs_st.{json,md,png} (``--smoke``: bench/results/smoke/, with its own data
subset, cache and output folders under /tmp, so it never touches real results or caches).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.data.types import Run, TrainGroup  # noqa: E402
from densekd.encoders.dense import DenseEncoder, resolve_model_path  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.pipeline import steps  # noqa: E402
from densekd.pipeline.config import PipelineConfig  # noqa: E402
from densekd.pipeline.run import train_student  # noqa: E402

NAME = "distill_vs_st"
ROW_ORDER = ["bm25", "zeroshot", "teacher_rerank", "teacher_rerank_cross_encoder", "contrastive", "kl_kd", "st_kl_kd",
             "margin_mse_kd", "st_margin_mse_kd"]
#: densekd's cheap mode (no sentence-transformers counterpart): query tower trained, passage vectors frozen
QUERY_ONLY_ROWS = ["contrastive_query_only", "kl_kd_query_only", "margin_mse_kd_query_only"]
SMOKE_ROOT = Path(tempfile.gettempdir()) / "densekd-bench-smoke"
SMOKE_SETTINGS = ["data.max_train_queries=8", "teacher.max_steps=2", "teacher.max_length=128",
                  "student.max_steps=2", "student.batch_size=4", "student.passage_max_length=128",
                  "student.logging_steps=1"]


# ----------------------------------------------------------------------------------------- setup
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-kd.yaml", "scifact", "bench-distill-scifact")
    ap.add_argument("--rerank-depth", type=int, default=100, help="BM25 depth the teacher reranks on dev")
    ap.add_argument("--margin-scale", type=float, default=None,
                    help="teacher logits are divided by this for MarginMSE (default 1 / KL student temperature)")
    ap.add_argument("--ce-pairs", type=int, default=512, help="pairs for the CE scoring throughput")
    ap.add_argument("--ce-chunk", type=int, default=128, help="pairs per interleaved CE timing chunk")
    ap.add_argument("--retrain", action="store_true", help="retrain densekd students even when cached")
    ap.add_argument("--query-only-epochs", type=float, default=8.0,
                    help="epochs of the query-side-only rows (0 = skip them)")
    ap.add_argument("--query-only-lr", type=float, default=5e-5, help="learning rate of the query-side-only rows")
    ap.add_argument("--smoke", action="store_true", help="tiny settings, /tmp caches, bench/results/smoke/")
    ap.add_argument("--smoke-dev-queries", type=int, default=20)
    ap.add_argument("--smoke-extra-docs", type=int, default=200)
    args = ap.parse_args()
    if args.smoke:
        args.rerank_depth, args.ce_pairs, args.ce_chunk, args.retrain = 5, 32, 16, True
        args.out_dir = str(SMOKE_ROOT / "runs")
    return args


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Config file < ``--data-root`` < (smoke settings) < ``--set``; rerank depth from ``--rerank-depth``."""
    data_root = str(Path(args.data_root).resolve())
    # no intermediate checkpoints: the ST peers write none, and throughput is compared
    overrides = ["student.save_steps=0"] + (SMOKE_SETTINGS if args.smoke else []) + list(args.overrides)
    cfg = load_config(args.config, overrides, PipelineConfig, flags={"data": {"root": data_root}})
    teacher = dataclasses.replace(cfg.teacher, rerank_depth=args.rerank_depth)
    cfg = dataclasses.replace(cfg, teacher=teacher, output_dir=args.out_dir)
    if args.smoke:
        root = make_smoke_data(cfg, SMOKE_ROOT / "data", args.smoke_dev_queries, args.smoke_extra_docs)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                                  cache_dir=str(SMOKE_ROOT / "cache"))
    return cfg


def make_smoke_data(cfg: PipelineConfig, out: Path, n_dev: int, extra_docs: int) -> Path:
    """A BEIR folder with the first training / dev queries, their judged documents and ``extra_docs`` others.

    Written deterministically, so repeated smoke runs keep the same data digest (and caches).
    """
    from densekd.data.beir import load_corpus, load_qrels, load_queries, write_corpus, write_qrels, write_queries

    src = Path(cfg.data.root)
    corpus, queries = load_corpus(src / "corpus.jsonl"), load_queries(src / "queries.jsonl")
    n_train = cfg.data.max_train_queries or 8
    train = dict(list(load_qrels(src / "qrels" / f"{cfg.data.train_split}.tsv").items())[:n_train])
    dev = dict(list(load_qrels(src / "qrels" / f"{cfg.data.eval_split}.tsv").items())[:n_dev])
    judged = {pid for qrels in (train, dev) for docs in qrels.values() for pid in docs}
    others = [pid for pid in corpus if pid not in judged][:extra_docs]
    keep = judged | set(others)
    write_corpus(out / "corpus.jsonl", [p for pid, p in corpus.items() if pid in keep])
    write_queries(out / "queries.jsonl", [queries[qid] for qid in queries if qid in train or qid in dev])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    write_qrels(out / "qrels" / f"{cfg.data.train_split}.tsv", train)
    write_qrels(out / "qrels" / f"{cfg.data.eval_split}.tsv", dev)
    return out


@dataclasses.dataclass
class Prepared:
    """The pipeline's cached inputs shared by every row."""

    ctx: steps.Context
    train_run: Run
    eval_run: Run
    bm25_key: str
    groups: list[TrainGroup]       # mined, no teacher scores
    scored: list[TrainGroup]       # with the configured (fused) teacher signal, as the pipeline trains on
    scorer: Any                    # the CrossEncoderTeacher, or None when the fusion weighs none
    base_encoder: DenseEncoder
    zero_shot_store: Any
    label_dense: Any = None        # the labels-only dense members, when the fusion weighs them
    mined: Any = None              # the pipeline's Mined (first-stage runs of the teacher's dev candidates)


def prepare(cfg: PipelineConfig) -> Prepared:
    """BM25 runs, candidates, teacher members (trained if missing), fused teacher scores, zero-shot
    embeddings: the pipeline's own steps (all cached), for any ``teacher.fusion``."""
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.run import fused_groups

    m = mined_groups(cfg)
    uses = cfg.teacher.uses
    scorer = steps.teacher(m.ctx, m.groups, m.mined_key) if "cross_encoder" in uses else None
    scored = steps.annotate_groups(m.ctx, m.groups, m.mined_key, scorer) if scorer is not None else m.groups
    label_dense = m.members() if "label_dense" in uses else None
    base_encoder = DenseEncoder.from_pretrained(cfg.student.model, query_max_length=cfg.student.query_max_length,
                                                passage_max_length=cfg.student.passage_max_length)
    fused, _ = fused_groups(m.ctx, scored, base_encoder, m.store, label_dense)
    return Prepared(m.ctx, m.train_run, m.eval_run, m.bm25_key, m.groups, fused, scorer, base_encoder, m.store,
                    label_dense, m)


# ------------------------------------------------------------------------------- baseline rows
def baseline_rows(p: Prepared) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """BM25, zero-shot and teacher-rerank metrics; their wall times; which teacher signal was distilled."""
    ctx = p.ctx
    ce_run = steps.teacher_dev_run(ctx, p.scorer, p.eval_run, p.bm25_key)
    fused = any(w > 0 for k, w in ctx.cfg.teacher.fusion.items() if k != "cross_encoder")
    teacher = steps.teacher_dev_metrics(ctx, ce_run, p.eval_run, p.base_encoder, p.zero_shot_store)
    rows = {"bm25": evaluate(p.eval_run, ctx.eval_qrels, steps.METRICS),
            "zeroshot": evaluate(steps.dense_run(p.base_encoder, p.zero_shot_store, ctx), ctx.eval_qrels,
                                 steps.METRICS),
            # the signal the students learn from; the cross-encoder alone beside it when fused
            "teacher_rerank": teacher["fused"] if fused else teacher["cross_encoder"]}
    if fused:
        rows["teacher_rerank_cross_encoder"] = teacher["cross_encoder"]
    t = ctx.timings
    wall = {"bm25": {"seconds": t["bm25"]["seconds"], "cached": t["bm25"]["cached"]},
            "zeroshot": {"encode_seconds": t["encode:zeroshot"]["seconds"], "cached": t["encode:zeroshot"]["cached"]},
            "teacher_rerank": {"rerank_seconds": t["teacher-dev"]["seconds"], "cached": t["teacher-dev"]["cached"],
                               "pairs": sum(len(v) for v in ce_run.values())}}
    return rows, wall, {"teacher_signal": {"fusion": dict(ctx.cfg.teacher.fusion), "fused": fused}}


# ------------------------------------------------------------------------------- densekd rows
def kl_options(cfg: PipelineConfig) -> dict[str, Any]:
    """The config's ``kl`` loss options without ``weight`` / ``type`` (the KL rows use weight 1, KL only)."""
    opts = dict(cfg.student.loss.get("kl") or {})
    return {k: v for k, v in opts.items() if k not in ("weight", "type")}


def scale_teacher(groups: list[TrainGroup], scale: float) -> list[TrainGroup]:
    """Copies of ``groups`` with every teacher logit divided by ``scale`` (the MarginMSE rows' labels)."""
    return [TrainGroup(g.qid, g.pos_ids, g.neg_ids, {pid: s / scale for pid, s in g.teacher_scores.items()},
                       g.extra_passages) for g in groups]


def row_context(ctx: steps.Context, out_dir: Path, loss: dict[str, Any]) -> steps.Context:
    """The shared context with this row's output folder and student loss (timings dict shared)."""
    cfg = dataclasses.replace(ctx.cfg, output_dir=str(out_dir),
                              student=dataclasses.replace(ctx.cfg.student, loss=loss))
    return dataclasses.replace(ctx, cfg=cfg)


def densekd_row(ctx: steps.Context, name: str, loss: dict[str, Any], groups: list[TrainGroup],
                store: Any, retrain: bool) -> tuple[dict[str, float], dict[str, Any], Path]:
    """Train one densekd student (cached unless ``retrain``), encode the corpus with it, evaluate."""
    out = Path(ctx.cfg.output_dir) / name
    if retrain and (out / "student").exists():
        shutil.rmtree(out / "student")
    rctx = row_context(ctx, out, loss)
    model_dir, summary = train_student(rctx, groups, store)
    train_cached = ctx.timings["student"]["cached"]
    encode_store = steps.corpus_embeddings(rctx, str(model_dir), ctx.cfg.student.passage_max_length, name)
    t_enc = ctx.timings[f"encode:{name}"]
    metrics = evaluate(steps.dense_run(DenseEncoder.from_pretrained(model_dir), encode_store, rctx),
                       ctx.eval_qrels, steps.METRICS)
    wall = {"library": "densekd", "loss": loss, "steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "train_instances_per_s": summary["steps"] * ctx.cfg.student.batch_size / summary["train_seconds"],
            "encode_seconds": t_enc["seconds"], "cached": {"train": train_cached, "encode": t_enc["cached"]}}
    print(f"[{name}] nDCG@10 {metrics['ndcg@10']:.3f} R@100 {metrics['recall@100']:.3f} "
          f"train {summary['train_seconds']}s{' (cached)' if train_cached else ''}")
    return metrics, wall, model_dir.parent / "log_history.json"


# ------------------------------------------------------------------------ sentence-transformers rows
def st_dataset(ctx: steps.Context, groups: list[TrainGroup], kind: str, n_epochs: int) -> tuple[Any, int]:
    """The ST training set: densekd's sampled instances of epochs ``0..n_epochs-1``, one row each.

    Columns ``query, positive, negative_1..negative_{G-1}, label``; ``label`` is the G teacher logits
    (``kind="kl"``) or the G-1 margins ``t_pos - t_neg_j`` (``kind="margin_mse"``). Returns the dataset
    and the number of instances holding a repeated candidate (densekd masks repeats, ST cannot).
    """
    from datasets import Dataset

    from densekd.training.dataset import TrainGroupDataset

    s = ctx.cfg.student
    ds = TrainGroupDataset(groups, ctx.queries, ctx.corpus, group_size=s.group_size, seed=s.seed)
    cols: dict[str, list] = {"query": [], "positive": [], **{f"negative_{j}": [] for j in range(1, s.group_size)},
                             "label": []}
    repeats = 0
    for epoch in range(n_epochs):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            repeats += len(set(item["pids"])) < len(item["pids"])
            cols["query"].append(item["query"])
            cols["positive"].append(item["passages"][0])
            for j in range(1, s.group_size):
                cols[f"negative_{j}"].append(item["passages"][j])
            t = item["teacher_scores"]
            cols["label"].append(t if kind == "kl" else [t[0] - x for x in t[1:]])
    return Dataset.from_dict(cols), repeats


def scaled_dot(scale: float) -> Any:
    """``pairwise_dot_score(a, b) * scale`` as a named function (ST model cards read ``__name__``)."""
    from sentence_transformers.util import pairwise_dot_score

    def scaled_pairwise_dot_score(a: Any, b: Any) -> Any:
        return pairwise_dot_score(a, b) * scale

    return scaled_pairwise_dot_score


def st_loss(model: Any, kind: str, kl: dict[str, Any]) -> Any:
    """ST's ``DistillKLDivLoss`` configured to equal densekd's KL spec ``kl``, or ``MarginMSELoss``."""
    from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MarginMSELoss

    if kind == "margin_mse":
        return MarginMSELoss(model)
    ts, tt = float(kl.get("student_temperature", 1.0)), float(kl.get("teacher_temperature", 1.0))
    if kl.get("scale_by_t2", True):
        return DistillKLDivLoss(model, student_temperature=ts, teacher_temperature=tt)
    # ST multiplies by student_temperature**2 always: put 1/Ts into the similarity instead
    return DistillKLDivLoss(model, similarity_fct=scaled_dot(1.0 / ts), student_temperature=1.0,
                            teacher_temperature=tt)


def st_row(ctx: steps.Context, name: str, kind: str, groups: list[TrainGroup], n_steps: int,
           kl: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any], list[dict]]:
    """Train MiniLM with ST's trainer and loss on the same instances and settings; encode and evaluate."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.training_args import BatchSamplers

    s = ctx.cfg.student
    n_epochs = max(1, math.ceil(n_steps * s.batch_size / len(groups)))
    dataset, repeats = st_dataset(ctx, groups, kind, n_epochs)
    model = SentenceTransformer(resolve_model_path(s.model), device="cpu")
    model.max_seq_length = s.passage_max_length
    args = Args(output_dir=str(Path(ctx.cfg.output_dir) / name / "st_checkpoints"),
                per_device_train_batch_size=s.batch_size, num_train_epochs=1, max_steps=n_steps,
                learning_rate=s.learning_rate, warmup_steps=s.warmup_ratio,  # < 1: a ratio, as the pipeline
                lr_scheduler_type="linear", seed=s.seed, save_strategy="no", logging_steps=s.logging_steps,
                dataloader_drop_last=True, report_to="none", batch_sampler=BatchSamplers.BATCH_SAMPLER)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=st_loss(model, kind, kl))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics, enc_s = st_evaluate(ctx, model)
    steps_done = trainer.state.global_step
    wall = {"library": "sentence-transformers", "loss": type(trainer.loss).__name__, "steps": steps_done,
            "train_seconds": round(seconds, 1), "train_instances_per_s": steps_done * s.batch_size / seconds,
            "encode_seconds": round(enc_s, 1), "cached": {"train": False, "encode": False},
            "instances_with_repeated_candidates": repeats, "max_seq_length": model.max_seq_length}
    print(f"[{name}] nDCG@10 {metrics['ndcg@10']:.3f} R@100 {metrics['recall@100']:.3f} train {seconds:.1f}s")
    return metrics, wall, trainer.state.log_history


def st_evaluate(ctx: steps.Context, model: Any) -> tuple[dict[str, float], float]:
    """Encode the corpus and dev queries with ``model.encode``, Flat FAISS search, densekd metrics."""
    from densekd.index.faiss_index import FaissIndex

    pids = list(ctx.corpus)
    start = time.perf_counter()
    emb = model.encode([ctx.corpus[p].full_text() for p in pids], batch_size=ctx.cfg.encode_batch_size,
                       convert_to_numpy=True, show_progress_bar=True)
    enc_s = time.perf_counter() - start
    index = FaissIndex(emb.shape[1], "Flat")
    index.add(pids, np.asarray(emb, dtype=np.float32))
    qids = list(ctx.eval_qrels)
    q = model.encode([ctx.queries[qid].text for qid in qids], batch_size=128, convert_to_numpy=True)
    run = index.search(np.asarray(q, dtype=np.float32), qids, k=100)
    return evaluate(run, ctx.eval_qrels, steps.METRICS), enc_s


# ------------------------------------------------------------------------------ CE throughput
def ce_pairs(p: Prepared, n: int) -> list[tuple[str, str]]:
    """``n`` dev (query, passage) pairs from the BM25 run, rank by rank across queries (rank 1 of all first)."""
    ctx = p.ctx
    ranked = {qid: sorted(docs, key=lambda d: -docs[d]) for qid, docs in p.eval_run.items()}
    depth = max(len(v) for v in ranked.values())
    pairs = [(ctx.queries[qid].text, ctx.corpus[ranked[qid][r]].full_text())
             for r in range(depth) for qid in ranked if r < len(ranked[qid])]
    return pairs[:n]


def ce_throughput(scorer: Any, pairs: list[tuple[str, str]], batch_size: int, chunk: int) -> dict[str, Any]:
    """densekd ``CrossEncoder.predict`` vs ST ``CrossEncoder.predict`` on the saved teacher, interleaved."""
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    encoder = scorer.encoder  # the CrossEncoderTeacher's cross-encoder
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save_pretrained(tmp)
        st = STCrossEncoder(tmp, num_labels=1, max_length=encoder.max_length, activation_fn=torch.nn.Identity(),
                            device="cpu")
        warm = pairs[:batch_size]
        encoder.predict(warm, batch_size=batch_size, show_progress=False)
        st.predict(warm, batch_size=batch_size, show_progress_bar=False)
        dk_parts, st_parts, dk_s, st_s = [], [], 0.0, 0.0
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            t0 = time.perf_counter()
            dk_parts.append(encoder.predict(part, batch_size=batch_size, show_progress=False))
            t1 = time.perf_counter()
            st_parts.append(np.asarray(st.predict(part, batch_size=batch_size, show_progress_bar=False,
                                                  convert_to_numpy=True), dtype=np.float32))
            t2 = time.perf_counter()
            dk_s, st_s = dk_s + (t1 - t0), st_s + (t2 - t1)
    diff = float(np.abs(np.concatenate(dk_parts) - np.concatenate(st_parts)).max())
    n = len(pairs)
    return {"pairs": n, "batch_size": batch_size, "chunk": chunk, "max_length": encoder.max_length,
            "densekd_seconds": dk_s, "st_seconds": st_s, "densekd_pairs_per_s": n / dk_s,
            "st_pairs_per_s": n / st_s, "max_abs_logit_diff": diff, "ratio": (n / dk_s) / (n / st_s)}


# --------------------------------------------------------------------------------- checks
def query_truncation(p: Prepared) -> dict[str, Any]:
    """How many queries exceed densekd's query max length (ST truncates queries at the passage length)."""
    limit = p.ctx.cfg.student.query_max_length
    tok = p.base_encoder.tokenizer

    def lengths(qids: list[str]) -> list[int]:
        return [len(ids) for ids in tok([p.ctx.queries[q].text for q in qids])["input_ids"]] or [0]

    train, dev = lengths(sorted({g.qid for g in p.groups})), lengths(list(p.ctx.eval_qrels))
    return {"query_max_length": limit, "train_queries_longer": sum(n > limit for n in train),
            "dev_queries_longer": sum(n > limit for n in dev), "max_query_tokens": max(train + dev)}


def teacher_margins(groups: list[TrainGroup], scale: float) -> dict[str, float]:
    """Percentiles of the teacher's raw logit margins ``t_pos - t_neg`` (and after ``/ scale``)."""
    m = np.array([g.teacher_scores[g.pos_ids[0]] - g.teacher_scores[n] for g in groups for n in g.neg_ids])
    if not len(m):
        return {}
    p5, p50, p95 = np.percentile(m, [5, 50, 95]).tolist()
    return {"p5": p5, "p50": p50, "p95": p95, "scale": scale, "scaled_p5": p5 / scale, "scaled_p95": p95 / scale}


def comparisons(rows: dict[str, dict], wall: dict[str, dict]) -> dict[str, Any]:
    """densekd vs ST per loss (throughput ratio, quality deltas) and the pooled throughput ratio."""
    per: dict[str, Any] = {}
    totals = {"dk_n": 0.0, "dk_s": 0.0, "st_n": 0.0, "st_s": 0.0}
    for row in ("kl_kd", "margin_mse_kd"):
        dk, st = wall[row], wall[f"st_{row}"]
        per[row] = {"train_throughput_ratio": dk["train_instances_per_s"] / st["train_instances_per_s"],
                    **{f"{m}_delta": rows[row][m] - rows[f"st_{row}"][m] for m in ("ndcg@10", "recall@100")},
                    "ndcg@10_ratio": rows[row]["ndcg@10"] / max(rows[f"st_{row}"]["ndcg@10"], 1e-12),
                    "ndcg@10_not_worse": rows[row]["ndcg@10"] >= rows[f"st_{row}"]["ndcg@10"]}
        totals["dk_n"] += dk["train_instances_per_s"] * dk["train_seconds"]
        totals["dk_s"] += dk["train_seconds"]
        totals["st_n"] += st["train_instances_per_s"] * st["train_seconds"]
        totals["st_s"] += st["train_seconds"]
    pooled = (totals["dk_n"] / totals["dk_s"]) / (totals["st_n"] / totals["st_s"])
    return {"per_loss": per, "pooled_train_throughput_ratio": pooled}


# ------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    """Results tables (quality + wall time, densekd vs ST, CE scoring) and notes."""
    rows, wall, cmp, ce = result["rows"], result["wall"], result["comparison"], result["ce_scoring"]
    body = f"**WARNING: {result['warning']}**\n\n" if result.get("warning") else ""
    table = []
    for name in [n for n in ROW_ORDER + QUERY_ONLY_ROWS if n in rows]:
        w = wall.get(name, {})
        cached = w.get("cached")
        cached = ", ".join(k for k, v in cached.items() if v) if isinstance(cached, dict) else cached and "yes"
        table.append([name, *[rows[name][m] for m in ("ndcg@10", "mrr@10", "recall@100", "map")],
                      _fmt(w.get("train_seconds"), 1), _fmt(w.get("train_instances_per_s"), 2),
                      _fmt(w.get("encode_seconds", w.get("rerank_seconds", w.get("seconds"))), 1), cached or "-"])
    body += markdown_table(["row", "nDCG@10", "MRR@10", "R@100", "MAP", "train s", "train queries/s",
                            "encode / rerank s", "cached"], table)
    body += "\n" + markdown_table(
        ["loss", "train throughput densekd / ST", "nDCG@10 densekd - ST", "R@100 densekd - ST"],
        [[k, v["train_throughput_ratio"], v["ndcg@10_delta"], v["recall@100_delta"]]
         for k, v in cmp["per_loss"].items()]
        + [["pooled", result["train_throughput_ratio_vs_sentence_transformers"], "-", "-"]])
    body += "\n" + markdown_table(
        ["cross-encoder scoring", "pairs/s", "seconds", "ratio vs ST"],
        [["densekd CrossEncoder.predict", ce["densekd_pairs_per_s"], ce["densekd_seconds"], ce["ratio"]],
         ["sentence-transformers CrossEncoder.predict", ce["st_pairs_per_s"], ce["st_seconds"], 1.0]])
    return body + notes(result)


def _fmt(v: Any, digits: int) -> str:
    """A number with ``digits`` decimals, or ``-`` for none."""
    return "-" if v is None else f"{float(v):.{digits}f}"


def notes(result: dict[str, Any]) -> str:
    """Settings and caveats under the tables."""
    s, ce, q = result["settings"], result["ce_scoring"], result["checks"]["query_truncation"]
    st = s["student"]
    same_run = "" if result["train_timings_same_run"] else (
        " **Some densekd students were reused from an earlier run: their throughput is not from this run "
        "(use --retrain).**")
    return (f"\nSciFact {s['eval_split']} ({s['eval_queries']} queries, {s['corpus_size']} passages); "
            f"{s['train_groups']} training groups. Every student starts from all-MiniLM-L6-v2: batch "
            f"{st['batch_size']} queries x group {st['group_size']}, {result['wall']['kl_kd']['steps']} steps, "
            f"lr {st['learning_rate']}, warm-up {st['warmup_ratio']}, seed {st['seed']}, max length "
            f"{st['query_max_length']}/{st['passage_max_length']} (ST: {st['passage_max_length']} for both; "
            f"{q['train_queries_longer']} training and {q['dev_queries_longer']} dev queries exceed "
            f"{q['query_max_length']} tokens). KL: {s['kl_loss']}; MarginMSE on teacher logits / "
            f"{s['margin_scale']:g}. Teacher reranks BM25 top {s['rerank_depth']}. Throughput = training "
            f"queries per second of `trainer.train()`.{same_run} CE scoring: {ce['pairs']} dev pairs, batch "
            f"{ce['batch_size']}, max length {ce['max_length']}, interleaved in chunks of {ce['chunk']}; max "
            f"|logit difference| = {ce['max_abs_logit_diff']:.2e}.\n\n![results]({NAME}.png)\n")


def loss_curves(histories: dict[str, list[dict]]) -> dict[str, list[list[float]]]:
    """``row -> [[step, loss], ...]`` from the trainers' ``log_history`` (kept in the JSON for the plot)."""
    return {name: [[h["step"], h["loss"]] for h in hist if "loss" in h and "step" in h]
            for name, hist in histories.items()}


def plot(result: dict[str, Any], path: Path) -> None:
    """Quality bars per row, training-loss curves (densekd vs ST), training throughput bars."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    names = [n for n in ROW_ORDER + QUERY_ONLY_ROWS if n in result["rows"]]
    x = np.arange(len(names))
    for i, m in enumerate(("ndcg@10", "recall@100")):
        axes[0].bar(x + (i - 0.5) * 0.4, [result["rows"][n][m] for n in names], width=0.4, label=m)
    axes[0].set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    axes[0].set_ylim(0, 1.15)
    axes[0].set_title("SciFact dev" + (" (teacher does not beat BM25!)" if result.get("warning") else ""))
    axes[0].legend(fontsize=8, ncol=2, loc="upper right")
    colors = {"contrastive": "tab:blue", "kl_kd": "tab:orange", "margin_mse_kd": "tab:red"}
    for name, pts in result["loss_curves"].items():
        if pts:
            axes[1].plot(*zip(*pts), label=name, color=colors[name.removeprefix("st_")],
                         ls="--" if name.startswith("st_") else "-")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_title("training loss (densekd solid, ST dashed: same loss)")
    axes[1].legend(fontsize=8)
    train = [n for n in names if "train_instances_per_s" in result["wall"].get(n, {})]
    axes[2].bar(train, [result["wall"][n]["train_instances_per_s"] for n in train],
                color=["tab:gray" if n.startswith("st_") else "tab:green" for n in train])
    axes[2].tick_params(axis="x", rotation=35, labelsize=8)
    axes[2].set_ylabel("training queries / s")
    axes[2].set_title(f"train ratio {result['train_throughput_ratio_vs_sentence_transformers']:.2f}x, "
                      f"CE scoring ratio {result['ce_scoring_ratio_vs_sentence_transformers']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def train_rows(p: Prepared, args: argparse.Namespace, kl: dict[str, Any], scale: float
               ) -> tuple[dict[str, dict], dict[str, dict], dict[str, list[dict]]]:
    """The five trained rows, peers back to back: contrastive, KL (densekd, ST), MarginMSE (densekd, ST)."""
    ctx, store = p.ctx, p.zero_shot_store
    rows, wall, hist = {}, {}, {}
    scaled = scale_teacher(p.scored, scale)
    for name, loss, groups in (("contrastive", {"contrastive": {}}, p.groups),
                               ("kl_kd", {"kl": {"weight": 1.0, **kl}}, p.scored),
                               ("margin_mse_kd", {"margin_mse": {}}, scaled)):
        rows[name], wall[name], log_file = densekd_row(ctx, name, loss, groups, store, args.retrain)
        hist[name] = json.loads(log_file.read_text()) if log_file.is_file() else []
        if name != "contrastive":
            kind = "kl" if name == "kl_kd" else "margin_mse"
            st_name = f"st_{name}"
            rows[st_name], wall[st_name], hist[st_name] = st_row(ctx, st_name, kind, groups, wall[name]["steps"], kl)
    return rows, wall, hist


def query_only_student(p: Prepared, out: Path, loss: dict[str, Any], groups: list[TrainGroup], epochs: float,
                       lr: float, seed: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one ``query_only`` student into ``out`` (cached on its key) and evaluate it on dev.

    The passage vectors are the cached zero-shot ones, for training and search alike. Returns the dev
    metrics and the training summary; ``seed`` defaults to the config's.
    """
    ctx = p.ctx
    student = dataclasses.replace(ctx.cfg.student, train_mode="query_only", epochs=epochs, learning_rate=lr,
                                  seed=ctx.cfg.student.seed if seed is None else seed)
    rctx = row_context(dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, student=student)), out, loss)
    model_dir, summary = train_student(rctx, groups, p.zero_shot_store)
    metrics = evaluate(steps.dense_run(DenseEncoder.from_pretrained(model_dir), p.zero_shot_store, rctx),
                       ctx.eval_qrels, steps.METRICS)
    return metrics, summary


def query_only_rows(p: Prepared, args: argparse.Namespace, kl: dict[str, Any], scale: float
                    ) -> tuple[dict[str, dict], dict[str, dict]]:
    """The three losses again in ``query_only`` mode (passage vectors = the cached zero-shot ones)."""
    rows: dict[str, dict] = {}
    wall: dict[str, dict] = {}
    if not args.query_only_epochs:
        return rows, wall
    ctx = p.ctx
    for name, loss, groups in (("contrastive_query_only", {"contrastive": {}}, p.groups),
                               ("kl_kd_query_only", {"kl": {"weight": 1.0, **kl}}, p.scored),
                               ("margin_mse_kd_query_only", {"margin_mse": {}}, scale_teacher(p.scored, scale))):
        out = Path(ctx.cfg.output_dir) / name
        if args.retrain and (out / "student").exists():
            shutil.rmtree(out / "student")
        rows[name], summary = query_only_student(p, out, loss, groups, args.query_only_epochs, args.query_only_lr)
        wall[name] = {"library": "densekd", "mode": "query_only", "loss": loss, "steps": summary["steps"],
                      "train_seconds": summary["train_seconds"], "epochs": args.query_only_epochs,
                      "learning_rate": args.query_only_lr,
                      "train_instances_per_s": summary["steps"] * ctx.cfg.student.batch_size / summary["train_seconds"],
                      "cached": {"train": ctx.timings["student"]["cached"]}}
        print(f"[{name}] nDCG@10 {rows[name]['ndcg@10']:.3f} R@100 {rows[name]['recall@100']:.3f}")
    return rows, wall


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    result: dict[str, Any] = {"provenance": provenance()}
    p = prepare(cfg)
    rows, wall, extra = baseline_rows(p)
    if rows["teacher_rerank"]["ndcg@10"] <= rows["bm25"]["ndcg@10"]:
        print(f"WARNING: the teacher's rerank (nDCG@10 {rows['teacher_rerank']['ndcg@10']:.3f}) does not beat "
              f"BM25 ({rows['bm25']['ndcg@10']:.3f}): distillation figures will not count")
    kl = kl_options(cfg)
    scale = args.margin_scale or 1.0 / float(kl.get("student_temperature", 0.05))
    trained_rows, trained_wall, histories = train_rows(p, args, kl, scale)
    rows.update(trained_rows)
    wall.update(trained_wall)
    qo_rows, qo_wall = query_only_rows(p, args, kl, scale)
    rows.update(qo_rows)
    wall.update(qo_wall)
    ce = ce_throughput(p.scorer, ce_pairs(p, args.ce_pairs), cfg.teacher.score_batch_size, args.ce_chunk)
    cmp = comparisons(rows, wall)
    counts = rows["teacher_rerank"]["ndcg@10"] > rows["bm25"]["ndcg@10"]
    result.update({
        "settings": {**vars(args), "eval_split": cfg.data.eval_split, "eval_queries": len(p.ctx.eval_qrels),
                     "corpus_size": len(p.ctx.corpus), "train_groups": len(p.groups), "margin_scale": scale,
                     "kl_loss": {"kl": {"weight": 1.0, **kl}}, "student": dataclasses.asdict(cfg.student),
                     "pipeline_config": dataclasses.asdict(cfg)},
        "rows": {n: rows[n] for n in ROW_ORDER + QUERY_ONLY_ROWS if n in rows}, "wall": wall, **extra,
        "distillation_figures_count": counts,
        "train_throughput_ratio_vs_sentence_transformers": cmp["pooled_train_throughput_ratio"],
        "ce_scoring_ratio_vs_sentence_transformers": ce["ratio"],
        "train_timings_same_run": not any(wall[n]["cached"]["train"] for n in ("kl_kd", "margin_mse_kd")),
        "comparison": cmp, "ce_scoring": ce, "pipeline_steps": p.ctx.timings,
        "loss_curves": loss_curves(histories),
        "checks": {"query_truncation": query_truncation(p), "teacher_margins": teacher_margins(p.scored, scale)},
    })
    if not counts:
        result["warning"] = (f"teacher rerank nDCG@10 {rows['teacher_rerank']['ndcg@10']:.3f} <= BM25 "
                             f"{rows['bm25']['ndcg@10']:.3f}: distillation figures do not count")
    out_dir = RESULTS / "smoke" if args.smoke else RESULTS
    body = markdown(result)
    write_results(NAME, result, body, out_dir)
    plot(result, out_dir / f"{NAME}.png")
    print(body)


if __name__ == "__main__":
    main()
