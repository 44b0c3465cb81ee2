"""The steps of ``densekd run``; each reads its inputs, writes one cached output folder, returns data.

Cache layout (``cfg.cache_dir``), one folder per step output, keyed by what it depends on:

* ``bm25/<key>/``: ``train.trec``, ``eval.trec`` (BM25 runs; key: data digest, depth)
* ``mined/<key>/groups.jsonl``: TrainGroups without scores (key: BM25 key, mining settings)
* ``teacher/<key>/``: cross-encoder folder + ``DONE.json`` with its dev rerank metrics
* ``annotations/<key>/scores.jsonl``: teacher logits per candidate (resumable; key: mined key + teacher)
* ``embeddings/<key>/``: chunked corpus embeddings of a model (resumable; key: model + data + length)

Student outputs live in ``cfg.output_dir`` (they are what a run is for); the student folder is reused
when its ``DONE.json`` records the same key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekd.data.beir import load_corpus, load_qrels, load_queries
from densekd.data.io import write_jsonl
from densekd.data.trec import load_run, write_run
from densekd.data.types import Corpus, Qrels, Queries, Run, TrainGroup
from densekd.eval.metrics import evaluate
from densekd.pipeline.cache import cache_key, cached_step, file_digest
from densekd.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)
METRICS = ["ndcg@10", "mrr@10", "recall@100", "map"]


@dataclass
class Context:
    """Everything the steps share: config, loaded data, cache roots and a timing log."""

    cfg: PipelineConfig
    corpus: Corpus
    queries: Queries
    train_qrels: Qrels
    eval_qrels: Qrels
    data_key: str
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return Path(self.cfg.cache_dir).expanduser()

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def record(self, step: str, start: float, reused: bool) -> None:
        """Note a step's wall time and whether its cached output was reused."""
        self.timings[step] = {"seconds": round(time.perf_counter() - start, 1), "cached": reused}
        log.info("step %-10s %s in %.1fs", step, "reused" if reused else "done", self.timings[step]["seconds"])


def load_context(cfg: PipelineConfig) -> Context:
    """Load the corpus once, the queries and both qrels splits; digest the files for cache keys."""
    root = Path(cfg.data.root)
    files = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{cfg.data.train_split}.tsv",
             root / "qrels" / f"{cfg.data.eval_split}.tsv"]
    corpus = load_corpus(files[0])
    queries = load_queries(files[1])
    train_qrels = load_qrels(files[2], corpus=corpus, queries=queries)
    if cfg.data.max_train_queries:
        train_qrels = dict(list(train_qrels.items())[: cfg.data.max_train_queries])
    eval_qrels = load_qrels(files[3], corpus=corpus, queries=queries)
    return Context(cfg, corpus, queries, train_qrels, eval_qrels, data_key=file_digest(*files))


def _texts(ctx: Context, qrels: Qrels) -> dict[str, str]:
    return {qid: ctx.queries[qid].text for qid in qrels}


def bm25_runs(ctx: Context) -> tuple[Run, Run, str]:
    """BM25 runs for the training and the evaluation queries (cached)."""
    from densekd.index.bm25 import BM25Index

    depth = ctx.cfg.mining.depth
    key = cache_key("bm25-v1", ctx.data_key, depth, ctx.cfg.data.max_train_queries)
    folder = ctx.cache / "bm25" / key

    def compute(out: Path) -> dict[str, Any]:
        index = BM25Index()
        index.index(ctx.corpus)
        write_run(out / "train.trec", index.search(_texts(ctx, ctx.train_qrels), k=depth))
        write_run(out / "eval.trec", index.search(_texts(ctx, ctx.eval_qrels), k=max(depth, 100)))
        return {}

    start = time.perf_counter()
    _, reused = cached_step(folder, compute, {"depth": depth})
    ctx.record("bm25", start, reused)
    return load_run(folder / "train.trec"), load_run(folder / "eval.trec"), key


def mine(ctx: Context, train_run: Run, bm25_key: str) -> tuple[list[TrainGroup], str]:
    """Hard negatives from the BM25 run (cached as TrainGroups without scores)."""
    from densekd.mining.negatives import mine_negatives_with_stats

    m = ctx.cfg.mining
    key = cache_key("mine-v1", bm25_key, m)
    folder = ctx.cache / "mined" / key

    def compute(out: Path) -> dict[str, Any]:
        groups, stats = mine_negatives_with_stats(
            train_run, ctx.train_qrels, n_negatives=m.n_negatives, rank_range=tuple(m.rank_range),
            sampling=m.sampling, seed=ctx.cfg.student.seed)
        write_jsonl(out / "groups.jsonl", (g.to_json() for g in groups))
        return stats.as_dict()

    start = time.perf_counter()
    _, reused = cached_step(folder, compute, {"mining": m.__dict__})
    ctx.record("mine", start, reused)
    with open(folder / "groups.jsonl", encoding="utf-8") as f:
        return [TrainGroup.from_json(json.loads(line)) for line in f], key


def teacher_rerank_metrics(ctx: Context, teacher: Any, eval_run: Run) -> dict[str, float]:
    """The teacher's own quality: rerank BM25's top ``rerank_depth`` of the dev queries."""
    from densekd.teachers.cross_encoder import rerank

    run = rerank(teacher, eval_run, ctx.queries, ctx.corpus, k=ctx.cfg.teacher.rerank_depth,
                 batch_size=ctx.cfg.teacher.score_batch_size)
    return evaluate(run, ctx.eval_qrels, METRICS)


def teacher(ctx: Context, groups: list[TrainGroup], mined_key: str, eval_run: Run) -> tuple[Any, dict, str]:
    """Train (or load) the cross-encoder teacher; its dev rerank metrics are cached with it."""
    from densekd.teachers.cross_encoder import CrossEncoderTeacher
    from densekd.training.teacher_config import TeacherConfig
    from densekd.training.teacher_trainer import train_cross_encoder

    t = ctx.cfg.teacher
    if t.path:
        folder, key = Path(t.path), cache_key("teacher-path", str(Path(t.path).resolve()))
        model = CrossEncoderTeacher.from_pretrained(folder, max_length=t.max_length)
        metrics_file = folder / "rerank_metrics.json"
        if not metrics_file.is_file():
            metrics_file.write_text(json.dumps(teacher_rerank_metrics(ctx, model, eval_run)))
        return model, json.loads(metrics_file.read_text()), key
    key = cache_key("teacher-v1", mined_key, t, ctx.cfg.student.seed)
    folder = ctx.cache / "teacher" / key

    def compute(out: Path) -> dict[str, Any]:
        args = TeacherConfig(
            output_dir=str(out / "checkpoints"), num_train_epochs=t.epochs, max_steps=t.max_steps,
            learning_rate=t.learning_rate, warmup_steps=t.warmup_ratio, per_device_train_batch_size=t.batch_size,
            group_size=t.group_size, max_length=t.max_length, loss=t.loss, seed=ctx.cfg.student.seed,
            save_strategy="no", lr_scheduler_type="linear")
        start = time.perf_counter()
        model = train_cross_encoder(groups, ctx.queries, ctx.corpus, args, model_path=t.model)
        seconds = time.perf_counter() - start
        model.save_pretrained(out)
        scorer = CrossEncoderTeacher.from_pretrained(out, max_length=t.max_length)
        return {"train_seconds": round(seconds, 1), "rerank": teacher_rerank_metrics(ctx, scorer, eval_run)}

    start = time.perf_counter()
    summary, reused = cached_step(folder, compute, {"teacher": t.__dict__})
    ctx.record("teacher", start, reused)
    return CrossEncoderTeacher.from_pretrained(folder, max_length=t.max_length), summary["rerank"], key


def annotate_groups(ctx: Context, groups: list[TrainGroup], mined_key: str, scorer: Any) -> list[TrainGroup]:
    """Teacher logits for every candidate (resumable: an interrupted run continues where it stopped)."""
    from densekd.teachers.annotate import annotate

    folder = ctx.cache / "annotations" / cache_key("annotate-v1", mined_key, scorer.fingerprint)
    start = time.perf_counter()
    path = folder / "scores.jsonl"
    reused = path.is_file()
    scored = annotate(groups, ctx.queries, ctx.corpus, scorer, path, batch_size=ctx.cfg.teacher.score_batch_size)
    ctx.record("annotate", start, reused)
    return scored


def corpus_embeddings(ctx: Context, model_path: str | None, max_length: int, tag: str) -> Any:
    """Corpus vectors of a dense model (cached, chunked, resumable); returns an EmbeddingStore."""
    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.index.encode import encode_corpus
    from densekd.teachers.base import fingerprint_file

    path = Path(resolve_model_path(model_path))
    weights = path / "model.safetensors"
    model_id = fingerprint_file(weights) if weights.is_file() else str(path)
    fingerprint = cache_key("dense", model_id, max_length, ctx.data_key)
    encoder = DenseEncoder.from_pretrained(path, passage_max_length=max_length)
    start = time.perf_counter()
    folder = ctx.cache / "embeddings" / fingerprint
    reused = (folder / "manifest.json").is_file()
    store = encode_corpus(encoder, ctx.corpus, folder, batch_size=ctx.cfg.encode_batch_size,
                          fingerprint=fingerprint)
    ctx.record(f"encode:{tag}", start, reused)
    return store


def dense_run(encoder: Any, store: Any, ctx: Context) -> Run:
    """Exact (Flat) search of the evaluation queries against stored passage vectors."""
    qrels_texts = _texts(ctx, ctx.eval_qrels)
    qids = list(qrels_texts)
    q = encoder.encode_queries([qrels_texts[qid] for qid in qids])
    return store.to_faiss("Flat", show_progress=False).search(q, qids, k=100)
