"""The steps of ``densekd run``; each reads its inputs, writes one cached output folder, returns data.

Cache layout (``cfg.cache_dir``), one folder per step output, keyed by what it depends on:

* ``bm25/<key>/``: ``train.trec``, ``eval.trec`` (BM25 runs, :func:`bm25_search`; key: data digest, depth)
* ``mined/<key>/groups.jsonl``: TrainGroups without scores (key: BM25 key, mining settings)
* ``teacher/<key>/``: cross-encoder folder + ``DONE.json`` with its dev rerank metrics
* ``annotations/<key>/scores.jsonl``: teacher logits per candidate (resumable; key: mined key + teacher)
* ``dark/<key>/scores.jsonl``: ADAM dark examples (texts in ``extra_passages``) with their teacher
  logits (resumable; key: mined key + teacher + dark-example settings + tokenizer)
* ``embeddings/<key>/``: chunked corpus embeddings of a model (resumable; key: model + corpus file + length;
  queries and splits are not part of it, so they never cause a re-encoding)
* ``token_states/<key>/``, ``extra_embeddings/<key>/``, ``extra_token_states/<key>/``: the frozen passage side
  of ``query_only`` students (:mod:`densekd.pipeline.frozen_passages`: a frozen model's passage token states
  and pooled vectors, key model + corpus file + length + dtype; ADAM dark examples' vectors and states)
* ``checkpoints/teacher/<key>/checkpoint-N/``: resumable checkpoints of an unfinished teacher
  training (``teacher.save_steps``); deleted once ``teacher/<key>/`` is complete

Student outputs live in ``cfg.output_dir`` (they are what a run is for); the student folder is reused
when its ``DONE.json`` records the same key.

Resuming a killed training: :mod:`densekd.pipeline.checkpoints` (checkpoints live next to the step
folders, keyed like them; a rerun resumes from the newest complete one).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densekd.data.beir import load_corpus, load_qrels, load_queries
from densekd.data.io import write_jsonl
from densekd.data.trec import load_run, write_run
from densekd.data.types import Corpus, Qrels, Queries, Run, TrainGroup
from densekd.pipeline.cache import StepLog, cache_key, file_digest, model_ref
from densekd.pipeline.checkpoints import (  # noqa: F401 (re-exported: steps.train_resumable etc.)
    checkpoint_folder,
    drop_checkpoints,
    resume_checkpoint,
    train_resumable,
)
from densekd.pipeline.config import PipelineConfig
from densekd.pipeline.frozen_passages import (  # noqa: F401 (re-exported: steps.passage_token_states etc.)
    passage_token_states,
    query_only_states,
    query_only_table,
)
from densekd.pipeline.teacher_signal import (  # noqa: F401 (re-exported: the benches read them as steps.*)
    METRICS,
    dense_signal,
    fuse_groups,
    teacher_dev_metrics,
)

log = logging.getLogger(__name__)


@dataclass
class Context(StepLog):
    """Everything the steps share: config, loaded data, and (:class:`StepLog`) cache roots and a timing log."""

    cfg: PipelineConfig
    corpus: Corpus
    queries: Queries
    train_qrels: Qrels
    eval_qrels: Qrels
    data_key: str
    corpus_key: str = ""  # the corpus file alone: what corpus encodings depend on
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    data_key = file_digest(*files)
    if cfg.data.pseudo_queries:  # self-supervised queries join the training set (their own key part)
        from densekd.mining.pseudo_queries import sentence_queries

        pseudo, pseudo_qrels = sentence_queries(corpus, cfg.data.pseudo_queries, cfg.data.pseudo_seed)
        queries = {**queries, **pseudo}
        train_qrels = {**train_qrels, **pseudo_qrels}
        data_key = cache_key(data_key, "pseudo-v1", cfg.data.pseudo_queries, cfg.data.pseudo_seed)
    return Context(cfg, corpus, queries, train_qrels, eval_qrels, data_key=data_key, corpus_key=file_digest(files[0]))


def _texts(ctx: Context, qrels: Qrels) -> dict[str, str]:
    return {qid: ctx.queries[qid].text for qid in qrels}


def bm25_runs(ctx: Context) -> tuple[Run, Run, str]:
    """BM25 runs for the training and the evaluation queries (cached)."""
    depth = ctx.cfg.mining.depth
    key = cache_key("bm25-v1", ctx.data_key, depth, ctx.cfg.data.max_train_queries)
    folder = ctx.cache / "bm25" / key
    bm25_search(ctx, "bm25", folder, {"train.trec": (_texts(ctx, ctx.train_qrels), depth),
                                      "eval.trec": (_texts(ctx, ctx.eval_qrels), max(depth, 100))},
                meta={"depth": depth})
    return load_run(folder / "train.trec"), load_run(folder / "eval.trec"), key


def bm25_search(ctx: StepLog, name: str, folder: Path, searches: dict[str, tuple[dict[str, str], int]],
                key: str | None = None, meta: dict[str, Any] | None = None, summary: dict[str, Any] | None = None,
                show_progress: bool = True) -> dict[str, Any]:
    """The BM25 step of every method: index ``ctx.corpus`` once, write one TREC run per query set (cached).

    ``ctx``: either pipeline's context (:class:`Context`, the reader -> retriever ``QAContext``); ``name``:
    the step in the timing log; ``folder``, ``key``: as :func:`~densekd.pipeline.cache.cached_step`;
    ``searches``: ``file name -> ({qid: query text}, depth)``; ``meta``, ``summary``: recorded in the
    marker (the summary is returned).
    """
    from densekd.index.bm25 import BM25Index

    def compute(out: Path) -> dict[str, Any]:
        index = BM25Index().index(ctx.corpus, show_progress=show_progress)
        for file, (texts, depth) in searches.items():
            write_run(out / file, index.search(texts, k=depth, show_progress=show_progress))
        return dict(summary or {})

    return ctx.step(name, folder, compute, key, meta)


def mine(ctx: Context, train_run: Run, bm25_key: str) -> tuple[list[TrainGroup], str]:
    """Hard negatives from the BM25 run (cached as TrainGroups without scores)."""
    from densekd.mining.negatives import mine_negatives_with_stats

    m = ctx.cfg.mining
    # the candidate run's key (bm25_key) already says where candidates come from: the default
    # ``retrieval`` stays out of the key, so mined groups cached before the field existed stay valid
    settings = {k: v for k, v in asdict(m).items() if not (k == "retrieval" and v == "bm25")}
    # v2: the sampling seed is mining.seed and in the key; v1 sampled with student.seed, left out of the
    # key, so a cached mining served students of every seed with the first run's draw
    key = cache_key("mine-v2", bm25_key, settings)
    folder = ctx.cache / "mined" / key

    def compute(out: Path) -> dict[str, Any]:
        groups, stats = mine_negatives_with_stats(
            train_run, ctx.train_qrels, n_negatives=m.n_negatives, rank_range=tuple(m.rank_range),
            sampling=m.sampling, seed=m.seed)
        write_jsonl(out / "groups.jsonl", (g.to_json() for g in groups))
        return stats.as_dict()

    ctx.step("mine", folder, compute, meta={"mining": m.__dict__})
    with open(folder / "groups.jsonl", encoding="utf-8") as f:
        return [TrainGroup.from_json(json.loads(line)) for line in f], key


TEACHER_TRAINING_FIELDS = ("model", "epochs", "max_steps", "learning_rate", "warmup_ratio", "batch_size",
                           "group_size", "max_length", "loss", "seed")


def teacher(ctx: Context, groups: list[TrainGroup], mined_key: str) -> Any:
    """Train the cross-encoder teacher (cached on the mined groups and training settings) or load ``path``."""
    from densekd.teachers.cross_encoder import CrossEncoderTeacher
    from densekd.training.teacher_trainer import train_cross_encoder

    t = ctx.cfg.teacher
    if t.path:
        return CrossEncoderTeacher.from_pretrained(t.path, max_length=t.max_length)
    settings = {name: getattr(t, name) for name in TEACHER_TRAINING_FIELDS}  # save_steps: not in the key
    settings["model"] = model_ref(t.model)  # a local start model by its content, not its path alone
    key = cache_key("teacher-v1", mined_key, settings)
    folder = ctx.cache / "teacher" / key
    checkpoints = checkpoint_folder(ctx.cache, "teacher", key)

    def compute(out: Path) -> dict[str, Any]:
        args = t.to_args(checkpoints)
        start = time.perf_counter()
        resume = resume_checkpoint(checkpoints, "teacher")
        train_cross_encoder(groups, ctx.queries, ctx.corpus, args, model_path=t.model,
                            resume_from_checkpoint=resume).save_pretrained(out)
        summary = {"train_seconds": round(time.perf_counter() - start, 1), "groups": len(groups)}
        return {**summary, "resumed_from": Path(resume).name} if resume else summary

    ctx.step("teacher", folder, compute, meta={"teacher": settings})
    drop_checkpoints(checkpoints)  # the marker is written: they are no longer needed
    return CrossEncoderTeacher.from_pretrained(folder, max_length=t.max_length)


def teacher_dev_run(ctx: Context, scorer: Any, eval_run: Run, bm25_key: str) -> Run:
    """Teacher logits for BM25's top ``rerank_depth`` of every dev query (cached TREC run)."""
    from densekd.teachers.rerank import rerank

    depth = ctx.cfg.teacher.rerank_depth
    folder = ctx.cache / "teacher_dev" / cache_key("teacher-dev-v1", bm25_key, scorer.fingerprint, depth)

    def compute(out: Path) -> dict[str, Any]:
        run = rerank(scorer, eval_run, ctx.queries, ctx.corpus, k=depth, batch_size=ctx.cfg.teacher.score_batch_size,
                     show_progress=True)
        write_run(out / "rerank.trec", run)
        return {}

    ctx.step("teacher-dev", folder, compute, meta={"depth": depth})
    return load_run(folder / "rerank.trec")


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


def _tokenizer_id(tokenizer: Any) -> str:
    """Digest of what the tokenizer does (vocabulary, normaliser), not of where it lives on disk."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return cache_key(type(tokenizer).__name__, blob)


def dark_examples(ctx: Context, groups: list[TrainGroup], scored: list[TrainGroup], mined_key: str,
                  scorer: Any = None) -> list[TrainGroup]:
    """Add ADAM dark examples to the annotated groups, scored by the cross-encoder (cached, resumable).

    The dark examples are built from the mined ``groups`` with the student's tokenizer, and only they
    (plus each query's positives, which :func:`~densekd.teachers.annotate.annotate` needs) are scored,
    into their own annotation file: the scores of the mined candidates come from ``scored``, i.e. the
    same annotation cache as a run without dark examples, so switching ADAM on costs
    ``n_mixup + n_masked + 1`` teacher pairs per query, not a full re-annotation. Without a
    cross-encoder (``scorer=None``) the groups carry no scores yet: the other teacher members score the
    dark texts with everything else in :func:`~densekd.pipeline.teacher_signal.fuse_groups`.
    """
    from transformers import AutoTokenizer

    from densekd.encoders.dense import resolve_model_path
    from densekd.mining.dark_examples import add_dark_examples_with_stats
    from densekd.teachers.annotate import annotate

    cfg = ctx.cfg.student.dark_examples.to_config()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ctx.cfg.student.model))
    start = time.perf_counter()
    with_dark, stats = add_dark_examples_with_stats(groups, ctx.queries, ctx.corpus, tokenizer, cfg)
    log.info("dark examples: %s", stats.as_dict())
    if scorer is None:
        ctx.record("dark", start, False)  # building them takes seconds; their scores are cached downstream
        return with_dark
    key = cache_key("dark-v1", mined_key, scorer.fingerprint, cfg, _tokenizer_id(tokenizer))
    path = ctx.cache / "dark" / key / "scores.jsonl"
    reused = path.is_file()
    base_ids = {g.qid: set(g.neg_ids) for g in groups}
    dark_only = [TrainGroup(g.qid, g.pos_ids, [n for n in g.neg_ids if n not in base_ids[g.qid]], None,
                            g.extra_passages) for g in with_dark]
    dark_scored = {g.qid: g for g in annotate(dark_only, ctx.queries, ctx.corpus, scorer, path,
                                              batch_size=ctx.cfg.teacher.score_batch_size)}
    scored_by_qid = {g.qid: g for g in scored}
    out = []
    for g in with_dark:
        base = scored_by_qid[g.qid]
        # positives keep their score from the shared annotation: one score per pair across files
        dark_scores = {pid: v for pid, v in dark_scored[g.qid].teacher_scores.items()
                       if pid not in base.teacher_scores}
        out.append(TrainGroup(g.qid, g.pos_ids, g.neg_ids, {**base.teacher_scores, **dark_scores}, g.extra_passages))
    ctx.record("dark", start, reused)
    return out


def corpus_embeddings(ctx: StepLog, model_path: str | Path | None, max_length: int, tag: str) -> Any:
    """Corpus vectors of a dense model (cached, chunked, resumable); returns an EmbeddingStore.

    ``ctx``: either pipeline's context (the reader -> retriever pipeline's
    :class:`~densekd.pipeline.qa_data.QAContext` shares this step and its cache with :class:`Context`).
    The key is the loaded encoder's own fingerprint (its class, settings and a digest of every weight,
    projection and untied passage tower included), the length and the corpus file: never a path, so a
    model folder retrained in place is re-encoded, and other queries or splits reuse the vectors.
    """
    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.index.dense_search import default_fingerprint
    from densekd.index.encode import encode_corpus

    path = Path(resolve_model_path(model_path))
    encoder = DenseEncoder.from_pretrained(path, passage_max_length=max_length)
    fingerprint = cache_key("dense-v3", default_fingerprint(encoder), max_length, ctx.corpus_key)
    start = time.perf_counter()
    folder = ctx.cache / "embeddings" / fingerprint
    reused = (folder / "manifest.json").is_file()
    store = encode_corpus(encoder, ctx.corpus, folder, batch_size=ctx.cfg.encode_batch_size,
                          fingerprint=fingerprint)
    ctx.record(f"encode:{tag}", start, reused)
    return store


def dense_run(encoder: Any, store: Any, ctx: Context, qrels: Qrels | None = None, k: int = 100) -> Run:
    """Exact (Flat) search of the evaluation queries (or those of ``qrels``) against stored passage vectors."""
    qrels_texts = _texts(ctx, ctx.eval_qrels if qrels is None else qrels)
    qids = list(qrels_texts)
    q = encoder.encode_queries([qrels_texts[qid] for qid in qids])
    return store.to_faiss("Flat", show_progress=False).search(q, qids, k=k)


def candidate_run(ctx: Context, train_run: Run, bm25_key: str, base_encoder: Any, store: Any) -> tuple[Run, str]:
    """The run negatives are mined from: BM25's (``mining.retrieval: bm25``), or BM25's and the zero-shot
    dense retriever's top ``mining.depth`` fused by reciprocal rank (``bm25+dense``), so the teacher
    scores lexical and semantic near-misses alike. Returns the run and its cache key (BM25's alone
    keeps the BM25 key, so existing mined groups stay valid)."""
    if ctx.cfg.mining.retrieval == "bm25":
        return train_run, bm25_key
    depth = ctx.cfg.mining.depth
    dense = dense_run(base_encoder, store, ctx, ctx.train_qrels, k=depth)
    return fused_candidates([train_run, dense], depth), cache_key("bm25+dense-v1", bm25_key, store.fingerprint)


def fused_candidates(runs: list[Run], depth: int) -> Run:
    """First-stage runs (top ``depth`` each) fused by reciprocal rank: the list ``mining.rank_range`` refers to."""
    from densekd.index.hybrid import fuse

    return fuse(runs, method="rrf", k=2 * depth)
