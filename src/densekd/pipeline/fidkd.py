"""Reader -> retriever distillation (Izacard & Grave, 2021) as an iterative, cached pipeline.

``densekd run configs/squad-fidkd.yaml`` (``method: fidkd``; settings in
:mod:`densekd.pipeline.fidkd_config`)::

    BM25 top-k -> [train FiD reader -> reader scores the k passages -> distil them into the dense
                   retriever -> retrieve again with it] x iterations

No passage labels are used anywhere: the reader learns from ``(question, retrieved passages,
answers)``, the retriever from the reader's scores. The training questions are the queries with
answers outside the evaluation split (:func:`~densekd.pipeline.qa_data.load_qa_context`); no training
qrels file is read.

Layout of ``output_dir`` (every folder is one :func:`~densekd.pipeline.cache.cached_step` whose
``DONE.json`` records the step's content key; keys chain, so a changed setting recomputes exactly
the steps downstream of it, and a rerun reuses everything):

* ``iter_0/runs/``: BM25's ``train.trec`` (top ``k`` per training question), ``dev.trec`` (top ``eval_depth``).
* ``iter_<n>/reader/``: ``model/`` (the reader, ``reader.kind``: a :class:`~densekd.encoders.reader.FiDReader`
  or a :class:`~densekd.encoders.span_reader.SpanReader`, trained on ``iter_<n-1>/runs/train.trec``, or
  ``iter_<n-1>/candidates/train.trec`` with ``retrieval.candidates: hybrid``),
  ``log_history.json``. With ``reader.cross_fit``: ``iter_<n>/reader_fold0/`` and ``reader_fold1/``,
  each trained on one fold of the questions and scoring the other (:mod:`densekd.pipeline.readers`).
* ``iter_<n>/scores/groups.jsonl``: one :class:`~densekd.data.types.TrainGroup` per training question
  holding its ``k`` passages in retrieval order and their raw reader scores (``teacher_scores``): a
  *label-free* group (``pos_ids == []``, :mod:`densekd.data.types`), since the loop reads no passage
  label. The retriever's training items put the reader's favourite first
  (:meth:`~densekd.data.types.TrainGroup.anchor_id`) and the others in retrieval order; label-based
  loss terms (``contrastive``) are refused, in the config and in the loss.
* ``iter_<n>/retriever/``: ``model/`` (the distilled :class:`~densekd.encoders.dense.DenseEncoder`), ``log_history.json``.
* ``iter_<n>/runs/``: the new retriever's runs (FAISS over the corpus); iteration ``n + 1`` reads them.
* ``iter_<n>/candidates/train.trec`` (``retrieval.candidates: hybrid`` only): those runs fused with BM25's
  (reciprocal rank, top ``k``): what iteration ``n + 1`` reads instead.
* ``iter_<n>/eval/predictions.jsonl``: per evaluation question the reader's answer from the new runs'
  top ``k`` and the passage it scored highest (``DONE.json``: EM/F1, ``top_attention_has_answer``).
* ``metrics.json``, ``report.md`` + PNGs; ``checkpoints/`` only while a step is unfinished (a rerun resumes).
* Corpus vectors (the start model's for ``query_only``, each full-mode retriever's) live in
  ``cache_dir/embeddings/`` through the shared :func:`densekd.pipeline.steps.corpus_embeddings`, keyed
  by weights, length and corpus file, so ``densekd run`` and this loop reuse each other's encodings.

Metrics row ``n``: retriever ``n``'s answer recall@1/5/20; reader ``n`` (trained on retriever ``n-1``'s
passages) answering from retriever ``n``'s top ``k`` (EM/F1, and whether its top-scored passage has an answer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from densekd.data.io import write_json, write_jsonl
from densekd.data.trec import load_run, write_run
from densekd.data.types import TrainGroup
from densekd.eval.qa import answer_recall, has_answer, reader_metrics
from densekd.pipeline import steps
from densekd.pipeline.cache import cache_key, model_ref
from densekd.pipeline.fidkd_config import FidKDConfig
from densekd.pipeline.qa_data import QAContext, load_qa_context, sample_ids

log = logging.getLogger(__name__)
RECALL_KS = (1, 5, 20)
#: Reader settings that change the trained reader (save_steps and the generation settings do not)
READER_FIELDS = ("model", "passage_max_length", "answer_max_length", "decoder_layers", "freeze_encoder", "epochs",
                 "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "warmup_ratio", "seed")
#: ... and those of the span reader (kept out of a FiD reader's key, so its cached runs stay valid)
SPAN_FIELDS = ("kind", "frozen_layers", "max_answer_tokens", "loss_mode", "select_weight")
#: Training questions per teacher call while scoring (the unit of resumption)
SCORE_CHUNK = 16


# ----------------------------------------------------------------------------------------- steps
def bm25_retrieval(ctx: QAContext) -> tuple[Path, str]:
    """Iteration 0: BM25 runs of the training and evaluation questions (``iter_0/runs``; the shared step)."""
    r = ctx.cfg.retrieval
    key = cache_key("fidkd-bm25-v1", ctx.data_key, ctx.train_qids, ctx.eval_qids, r.k, r.eval_depth)
    folder = ctx.out / "iter_0" / "runs"
    texts = {name: {q: ctx.queries[q].text for q in qids} for name, qids in (("train", ctx.train_qids),
                                                                             ("dev", ctx.eval_qids))}
    steps.bm25_search(ctx, "iter_0/bm25", folder, {"train.trec": (texts["train"], r.k),
                                                   "dev.trec": (texts["dev"], r.eval_depth)},
                      key=key, summary={"retriever": "bm25"}, show_progress=False)
    return folder, key


def train_reader(ctx: QAContext, n: int, runs: tuple[Path, str], previous: tuple[Path, str] | None,
                 qids: list[str], tag: str = "") -> tuple[Path, str]:
    """Train iteration ``n``'s reader on ``qids`` with the top ``k`` passages of ``runs`` (``iter_<n>/reader<tag>``).

    Resumable; ``tag`` names a cross-fitting fold (``"_fold0"``), whose questions ``qids`` are.
    """
    from densekd.pipeline.readers import KINDS

    rc, k = ctx.cfg.reader, ctx.cfg.retrieval.k
    start_from = previous if rc.continue_training and previous is not None else None
    settings = {name: getattr(rc, name) for name in READER_FIELDS + (SPAN_FIELDS if rc.kind == "span" else ())}
    settings["model"] = model_ref(rc.model)  # a local start model by its content, not its path alone
    key = cache_key("fidkd-reader-v1", runs[1], settings, k, start_from and start_from[1],
                    *((qids,) if tag else ()))
    checkpoints = steps.checkpoint_folder(ctx.out, f"reader{tag}-iter_{n}", key)

    def compute(out: Path) -> dict[str, Any]:
        run = load_run(runs[0] / "train.trec")
        examples = [(ctx.queries[q].text, ctx.queries[q].answers, ctx.passages(run, q))
                    for q in qids if run.get(q)]  # a question BM25 matched nothing for: no input
        start = str(start_from[0]) if start_from else rc.model
        summary = KINDS[rc.kind].train(rc, k, examples, start, checkpoints, out)
        del summary["steps_this_run"]
        return {**summary, "questions": len(examples), "start": str(start), "passages_from": str(runs[0])}

    folder = ctx.out / f"iter_{n}" / f"reader{tag}"
    ctx.step(f"iter_{n}/reader{tag}", folder, compute, key, {"reader": settings, "passages_from": str(runs[0])})
    steps.drop_checkpoints(checkpoints)
    return folder / "model", key


def cross_fit_folds(ctx: QAContext, bm25_runs: Path) -> dict[str, int]:
    """Fold (0/1) of each training question: the title of its BM25 top-1 passage, hashed (label-free)."""
    from densekd.pipeline.readers import title_folds

    run = load_run(bm25_runs / "train.trec")
    title = {q: p[0].title or p[0].id for q in ctx.train_qids if (p := ctx.passages(run, q))}
    fold = title_folds(list(title.values()))
    return {q: fold[t] for q, t in title.items()}


def train_readers(ctx: QAContext, n: int, runs: tuple[Path, str], previous: dict | None,
                  folds: dict[str, int] | None) -> dict[int | None, tuple[Path, str]]:
    """Iteration ``n``'s reader(s): one on all questions, or one per cross-fitting fold (keyed by fold)."""
    previous = previous or {}
    if folds is None:
        return {None: train_reader(ctx, n, runs, previous.get(None), ctx.train_qids)}
    return {f: train_reader(ctx, n, runs, previous.get(f), [q for q in ctx.train_qids if folds.get(q) == f],
                            f"_fold{f}") for f in (0, 1)}


def score_passages(ctx: QAContext, n: int, runs: Path, readers: dict[int | None, tuple[Path, str]],
                   folds: dict[str, int] | None) -> tuple[list[TrainGroup], str, dict]:
    """Reader scores of each training question's ``k`` passages as TrainGroups (``iter_<n>/scores``).

    Every reader is a :class:`~densekd.teachers.base.Teacher`, and the scores come from the one
    resumable annotator (:func:`~densekd.teachers.annotate.annotate`) that scores cross-encoder and
    ColBERT candidates in ``densekd run``: each question's passages in retrieval order, with its gold
    answer (which only answer-conditioned FiD scorings read). With cross-fitting a question is scored
    by the reader of the *other* fold. An interrupted run resumes from the annotator's partial files in
    ``checkpoints/scores-iter_<n>/<key>/`` (``SCORE_CHUNK`` questions per flush).
    """
    from densekd.pipeline.readers import KINDS
    from densekd.teachers.annotate import annotate

    kind, scoring = KINDS[ctx.cfg.reader.kind], ctx.cfg.teacher.scoring
    # v1: the groups are byte-identical to those of the loop's own scorer this replaced, so its caches stay valid
    key = cache_key("fidkd-scores-v1", *[readers[f][1] for f in sorted(readers, key=str)], scoring, folds)
    partial = steps.checkpoint_folder(ctx.out, f"scores-iter_{n}", key)

    def compute(out: Path) -> dict[str, Any]:
        run = load_run(runs / "train.trec")
        answers = {q: ctx.queries[q].answers[0] for q in ctx.train_qids}
        scored: dict[str, TrainGroup] = {}
        for f, (path, _) in readers.items():
            mine = [q for q in ctx.train_qids if run.get(q) and (f is None or folds.get(q) == 1 - f)]
            pids = {q: [p.id for p in ctx.passages(run, q)] for q in mine}
            todo = [TrainGroup(q, [], pids[q]) for q in mine]  # label-free: retrieval order, no positive
            for g in annotate(todo, ctx.queries, ctx.corpus, kind.teacher(path, scoring), partial / f"fold{f}.jsonl",
                              flush_every=SCORE_CHUNK, answers=answers, show_progress=False):
                scored[g.qid] = g
        groups = [scored[qid] for qid in ctx.train_qids if qid in scored]
        write_jsonl(out / "groups.jsonl", (g.to_json() for g in groups))
        hits = [has_answer(ctx.corpus[g.anchor_id()].text, ctx.queries[g.qid].answers) for g in groups]
        return {"questions": len(groups), "scoring": scoring, "cross_fit": folds is not None,
                "train_top_attention_has_answer": float(np.mean(hits)) if hits else 0.0}

    folder = ctx.out / f"iter_{n}" / "scores"
    summary = ctx.step(f"iter_{n}/scores", folder, compute, key, {"scoring": scoring})
    steps.drop_checkpoints(partial)
    return read_scores(folder), key, summary


def read_scores(folder: Path) -> list[TrainGroup]:
    """The groups of a scores step (``iter_<n>/scores/groups.jsonl``), read as label-free groups."""
    with open(folder / "groups.jsonl", encoding="utf-8") as f:
        return [label_free(TrainGroup.from_json(json.loads(line))) for line in f]


def label_free(group: TrainGroup) -> TrainGroup:
    """``group`` as a label-free group: every candidate in ``neg_ids``, in retrieval order.

    Files written before label-free groups existed held the reader's favourite in ``pos_ids`` (scores in
    retrieval order): read as this, they train exactly the same items, so their caches stay valid.
    """
    if not group.pos_ids:
        return group
    return TrainGroup(group.qid, [], list(group.teacher_scores or {}), group.teacher_scores)


def train_retriever(ctx: QAContext, n: int, groups: list[TrainGroup], scores_key: str, base_store: Any,
                    previous: tuple[Path, str] | None) -> tuple[Path, str]:
    """Distil the reader's scores into the dense retriever (``iter_<n>/retriever``; resumable)."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.training.dataset import TrainGroupDataset
    from densekd.training.trainer import DistillTrainer

    s, normalize = ctx.cfg.retriever, ctx.cfg.teacher.normalize
    k = s.group_size or ctx.cfg.retrieval.k  # the first k of each group: the reader's favourite, then retrieval order
    start_from = previous if s.continue_training and previous is not None else None
    settings = {name: v for name, v in asdict(s).items() if name != "save_steps" and (name != "group_size" or v)}
    settings["model"] = model_ref(s.model)
    # iteration 1 has no retriever to continue, so there the key holds continue_training at its default:
    # switching it reuses iteration 1 (and every step after it up to retriever 2) instead of retraining
    keyed = {**settings, "continue_training": True} if n == 1 else settings
    # labelled groups (the gold-trained twin) train differently since in-batch copies of a query's positive
    # stopped counting as its negatives; label-free groups (the reader's) do not, so their keys stay
    labelled = ["positive-repeats-excluded"] if any(g.pos_ids for g in groups) else []
    key = cache_key("fidkd-retriever-v1", scores_key, keyed, k, normalize, start_from and start_from[1], *labelled)
    if normalize == "zscore":
        from densekd.scores import zscore

        groups = [TrainGroup(g.qid, g.pos_ids, g.neg_ids, dict(zip(g.teacher_scores, zscore(np.array(
            list(g.teacher_scores.values()))).tolist()))) for g in groups]
    checkpoints = steps.checkpoint_folder(ctx.out, f"retriever-iter_{n}", key)

    def compute(out: Path) -> dict[str, Any]:
        args = s.to_args(k, len(groups), checkpoints)  # negative_sampling='top': every scored passage
        start = str(start_from[0]) if start_from else s.model
        encoder = DenseEncoder.from_pretrained(start, query_max_length=s.query_max_length,
                                               passage_max_length=s.passage_max_length)
        dataset = TrainGroupDataset(groups, ctx.queries, ctx.corpus, group_size=k, seed=s.seed, allow_label_free=True,
                                    negative_sampling="top")
        trainer = DistillTrainer(model=encoder, args=args, train_dataset=dataset,
                                 passage_embeddings=base_store if s.train_mode == "query_only" else None)
        summary = steps.train_resumable(trainer, checkpoints, "retriever", out)
        encoder.save_pretrained(out / "model")
        del summary["steps_this_run"]
        return {**summary, "start": str(start)}

    folder = ctx.out / f"iter_{n}" / "retriever"
    ctx.step(f"iter_{n}/retriever", folder, compute, key, {"retriever": settings, "normalize": normalize})
    steps.drop_checkpoints(checkpoints)
    return folder / "model", key


def retrieve(ctx: QAContext, n: int, retriever: tuple[Path, str], base_store: Any) -> tuple[Path, str]:
    """Index the corpus with retriever ``n`` (FAISS) and rank every question (``iter_<n>/runs``).

    ``query_only``: the passage tower is the start model's, so its cached vectors (``base_store``) are the
    index. ``full``: the retriever trained its passage tower too, so ``base_store`` is ignored and the corpus
    is encoded with the retriever (as :func:`train_retriever` ignores it for training).
    """
    from densekd.encoders.dense import DenseEncoder

    r = ctx.cfg.retrieval
    if ctx.cfg.retriever.train_mode != "query_only":  # stale passage vectors would be a silent wrong index
        base_store = None
    key = cache_key("fidkd-runs-v1", retriever[1], ctx.train_qids, ctx.eval_qids, r.k, r.eval_depth, r.factory)

    def compute(out: Path) -> dict[str, Any]:
        encoder = DenseEncoder.from_pretrained(retriever[0])
        store = base_store if base_store is not None else steps.corpus_embeddings(
            ctx, retriever[0], ctx.cfg.retriever.passage_max_length, f"iter_{n}")
        index = store.to_faiss(r.factory, show_progress=False)
        for name, qids, depth in (("train", ctx.train_qids, r.k), ("dev", ctx.eval_qids, r.eval_depth)):
            vectors = encoder.encode_queries([ctx.queries[q].text for q in qids])
            write_run(out / f"{name}.trec", index.search(vectors, qids, k=depth))
        return {"retriever": "dense", "model": str(retriever[0]), "index": f"faiss:{r.factory}",
                "passage_vectors": str(store.path)}

    folder = ctx.out / f"iter_{n}" / "runs"
    ctx.step(f"iter_{n}/retrieve", folder, compute, key)
    return folder, key


def training_candidates(ctx: QAContext, n: int, runs: tuple[Path, str], bm25: tuple[Path, str]) -> tuple[Path, str]:
    """The passages iteration ``n + 1``'s readers read (``retrieval.candidates``).

    ``dense``: retriever ``n``'s own runs. ``hybrid``: its training run and BM25's fused by reciprocal
    rank, top ``k`` kept (``iter_<n>/candidates/train.trec``; the summary records how often the top 1
    and any of the ``k`` hold an answer, a label-quality diagnostic that no step reads).
    """
    from densekd.index.hybrid import fuse

    k = ctx.cfg.retrieval.k
    if ctx.cfg.retrieval.candidates == "dense":
        return runs
    key = cache_key("fidkd-candidates-v1", runs[1], bm25[1], k)

    def compute(out: Path) -> dict[str, Any]:
        fused = fuse([load_run(bm25[0] / "train.trec"), load_run(runs[0] / "train.trec")], method="rrf", k=k)
        write_run(out / "train.trec", fused)
        lists = {q: ctx.passages(fused, q) for q in ctx.train_qids if fused.get(q)}
        top = [has_answer(p[0].text, ctx.queries[q].answers) for q, p in lists.items()]
        anyk = [any(has_answer(x.text, ctx.queries[q].answers) for x in p) for q, p in lists.items()]
        return {"candidates": "hybrid", "top1_has_answer": float(np.mean(top)) if top else 0.0,
                "any_of_k_has_answer": float(np.mean(anyk)) if anyk else 0.0}

    folder = ctx.out / f"iter_{n}" / "candidates"
    ctx.step(f"iter_{n}/candidates", folder, compute, key)
    return folder, key


def evaluate_reader(ctx: QAContext, n: int, reader: tuple[Path, str], runs: tuple[Path, str]) -> dict[str, float]:
    """Reader ``n`` on the evaluation questions over the top ``k`` of ``runs``: EM/F1, top-scored passage.

    With cross-fitting the fold-0 reader answers (both folds' readers are trained alike).
    """
    from densekd.pipeline.readers import KINDS

    rc, scoring = ctx.cfg.reader, ctx.cfg.teacher.scoring
    qids = sample_ids(ctx.eval_qids, rc.eval_max_queries, ctx.cfg.data.seed)
    key = cache_key("fidkd-eval-v1", reader[1], runs[1], scoring, rc.num_beams, qids)

    def compute(out: Path) -> dict[str, Any]:
        run = load_run(runs[0] / "dev.trec")
        asked = [q for q in qids if run.get(q)]  # no passage: no prediction (scored as a miss)
        passages = [ctx.passages(run, q) for q in asked]
        reads = KINDS[rc.kind].read(reader[0], scoring, [ctx.queries[q].text for q in asked], passages,
                                    rc.eval_batch_size, rc.num_beams)
        rows: list[dict[str, Any]] = []
        for qid, plist, (pred, scores) in zip(asked, passages, reads):
            top = plist[int(np.argmax(scores))]
            rows.append({"qid": qid, "prediction": pred, "top_pid": top.id,
                         "top_has_answer": has_answer(top.text, ctx.queries[qid].answers)})
        write_jsonl(out / "predictions.jsonl", rows)
        em_f1 = reader_metrics({r["qid"]: r["prediction"] for r in rows}, {q: ctx.queries[q] for q in qids})
        return {"reader_em": em_f1["em"], "reader_f1": em_f1["f1"],
                "top_attention_has_answer": sum(r["top_has_answer"] for r in rows) / len(qids)}

    return ctx.step(f"iter_{n}/eval", ctx.out / f"iter_{n}" / "eval", compute, key, {"questions": len(qids)})


# ----------------------------------------------------------------------------------------- loop
def run_fidkd(cfg: FidKDConfig) -> dict[str, Any]:
    """Run BM25 and ``cfg.iterations`` reader -> retriever rounds; write metrics.json and report.md.

    Returns
    -------
    dict
        ``{"name", "questions": {"train", "eval", "reader_eval"}, "bm25": {answer_recall@k}, "iterations": [row per
        iteration: answer_recall@1/5/20, reader_em, reader_f1, top_attention_has_answer,
        train_top_attention_has_answer], "steps": {step: {seconds, cached}}}``.
    """
    from densekd.pipeline import fidkd_report

    ctx = load_qa_context(cfg)
    ctx.out.mkdir(parents=True, exist_ok=True)
    eval_queries = {q: ctx.queries[q] for q in ctx.eval_qids}
    runs = bm25 = bm25_retrieval(ctx)
    result: dict[str, Any] = {
        "name": cfg.name, "questions": {"train": len(ctx.train_qids), "eval": len(ctx.eval_qids), "reader_eval": len(
            sample_ids(ctx.eval_qids, cfg.reader.eval_max_queries, cfg.data.seed))},
        "bm25": answer_recall(load_run(runs[0] / "dev.trec"), eval_queries, ctx.corpus, RECALL_KS), "iterations": []}
    base_store = None
    if cfg.retriever.train_mode == "query_only":  # one frozen passage side for every iteration
        base_store = steps.corpus_embeddings(ctx, cfg.retriever.model, cfg.retriever.passage_max_length, "base")
    folds = cross_fit_folds(ctx, runs[0]) if cfg.reader.cross_fit else None
    readers = retriever = None
    groups: list[TrainGroup] = []
    for n in range(1, cfg.iterations + 1):
        readers = train_readers(ctx, n, runs, readers, folds)
        reader = readers[0 if folds is not None else None]
        groups, scores_key, score_summary = score_passages(ctx, n, runs[0], readers, folds)
        retriever = train_retriever(ctx, n, groups, scores_key, base_store, retriever)
        runs = retrieve(ctx, n, retriever, base_store)
        row = {"iteration": n, **answer_recall(load_run(runs[0] / "dev.trec"), eval_queries, ctx.corpus, RECALL_KS),
               **evaluate_reader(ctx, n, reader, runs),
               "train_top_attention_has_answer": score_summary["train_top_attention_has_answer"]}
        result["iterations"].append(row)
        log.info("iteration %d: %s", n, {k: round(v, 3) for k, v in row.items()})
        if n < cfg.iterations:
            runs = training_candidates(ctx, n, runs, bm25)
    result["steps"] = ctx.timings
    write_json(ctx.out / "metrics.json", result)
    fidkd_report.write_report(ctx, result, groups)
    return result
