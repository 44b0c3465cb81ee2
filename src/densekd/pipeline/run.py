"""``densekd run CONFIG.yaml``: BM25 -> mine -> teacher -> annotate -> distil -> index -> evaluate -> report.

With ``student.dark_examples.enabled`` the annotate stage also builds ADAM dark examples and has the
teacher score them (:func:`densekd.pipeline.steps.dark_examples`); with ``student.self_paced.enabled``
the student trains on a :class:`~densekd.training.self_paced.SelfPacedDataset`.

Steps whose outputs exist (same data, model and settings) are reused, so a second run of the same
configuration only re-writes the report. Outputs in ``output_dir``:

* ``student/model/``: the distilled dual-encoder (densekd folder; ``densekd`` loads it, and
  ``DenseEncoder.export_sentence_transformers`` turns it into a sentence-transformers model)
* ``student/log_history.json``: the HF Trainer log (loss, components, dev metrics)
* ``metrics.json``: every system's dev metrics, step timings and cache reuse
* ``report.md`` with ``training.png`` and ``teacher_scores.png``
* ``checkpoints/student/<key>/checkpoint-N/``: only while the student training is unfinished

Killed training resumes: the teacher and the student write a checkpoint every ``save_steps`` optimizer
steps (``teacher.save_steps``, ``student.save_steps``; ``0`` = none) *outside* their step folder,
in ``cache_dir/checkpoints/teacher/<key>/`` and ``output_dir/checkpoints/student/<key>/``, because an
unfinished step folder (no ``DONE.json``) is wiped and recomputed. Rerunning the same command after a
kill -9 resumes from the newest complete checkpoint of the same cache key (logged as ``resuming
training from checkpoint-N``; the summary records ``resumed_from``) and ends with the same weights as
an uninterrupted run: the HF Trainer restores optimizer, scheduler and RNG states (dropout) and skips
the batches already seen, and negatives are sampled per (seed, epoch, index). ``save_steps`` is not
part of the cache key; the checkpoints are deleted once the step is complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from densekd.data.io import write_json
from densekd.data.types import TrainGroup
from densekd.eval.metrics import evaluate
from densekd.pipeline import report, steps
from densekd.pipeline.cache import cache_key, cached_step
from densekd.pipeline.config import PipelineConfig


def train_student(ctx: steps.Context, groups: list[TrainGroup], store: Any) -> tuple[Path, dict[str, Any]]:
    """Distil the teacher's scores into the dual-encoder student (cached on its inputs' key).

    Checkpoints every ``student.save_steps`` go to ``output_dir/checkpoints/student/<key>/``; a rerun
    with the same key resumes from the newest one (module docstring).
    """
    import shutil

    from densekd.training.callbacks import RetrievalEvalCallback
    from densekd.training.config import DistillConfig
    from densekd.training.dataset import TrainGroupDataset
    from densekd.training.trainer import DistillTrainer

    s = ctx.cfg.student
    settings = _student_settings(s)
    key = cache_key("student-v1", settings, [g.to_json() for g in groups])
    folder = ctx.out / "student"
    checkpoints = steps.checkpoint_folder(ctx.out, "student", key)

    def compute(out: Path) -> dict[str, Any]:
        for stale in checkpoints.parent.glob("*"):  # one student per output_dir: other settings' leftovers
            if stale != checkpoints:
                shutil.rmtree(stale, ignore_errors=True)
        args = DistillConfig(
            per_device_train_batch_size=s.batch_size,
            num_train_epochs=s.epochs, max_steps=s.max_steps, learning_rate=s.learning_rate,  # warmup_steps < 1 is a ratio
            warmup_steps=s.warmup_ratio, seed=s.seed, group_size=s.group_size, loss=s.loss,
            train_mode=s.train_mode, logging_steps=s.logging_steps, lr_scheduler_type="linear",
            **steps.training_args(s.save_steps, checkpoints))
        encoder = _build_student(s)
        dataset = TrainGroupDataset(groups, ctx.queries, ctx.corpus, group_size=s.group_size, seed=s.seed,
                                    extra_per_group=s.dark_examples.extra_per_group)
        callbacks = []
        if s.self_paced.enabled:
            from densekd.training.self_paced import SelfPacedDataset, SelfPacedLogCallback, SelfPacedSelector

            dataset = SelfPacedDataset(dataset, SelfPacedSelector(groups, s.self_paced.to_config()))
            callbacks.append(SelfPacedLogCallback(dataset))
        if s.eval_steps:
            callbacks.append(RetrievalEvalCallback(ctx.queries, ctx.corpus, ctx.eval_qrels,
                                                   every_n_steps=s.eval_steps, passage_embeddings=store
                                                   if s.train_mode == "query_only" else None))
        trainer = DistillTrainer(model=encoder, args=args, train_dataset=dataset, callbacks=callbacks,
                                 passage_embeddings=_passage_table(ctx, s, store))
        summary = steps.train_resumable(trainer, checkpoints, "student", out)
        encoder.save_pretrained(out / "model")
        n = summary.pop("steps_this_run") * s.batch_size  # this process's steps only
        return {**summary, "queries_per_s": round(n / summary["train_seconds"], 2)}

    start = time.perf_counter()
    summary, reused = cached_step(folder, compute, {"student": settings}, key=key)
    steps.drop_checkpoints(checkpoints)  # the marker is written: they are no longer needed
    ctx.record("student", start, reused)
    return folder / "model", summary


def _build_student(s: Any) -> Any:
    """The student model the section asks for, from its start checkpoint."""
    from densekd.encoders.dense import DenseEncoder

    lengths = {"query_max_length": s.query_max_length, "passage_max_length": s.passage_max_length}
    if s.architecture == "ernie":
        from densekd.encoders.ernie import ErnieSearchModel

        torch.manual_seed(s.seed)  # the ColBERT head is new: seed its initialisation
        return ErnieSearchModel.from_pretrained(s.model, colbert_dim=s.colbert_dim, **lengths)
    return DenseEncoder.from_pretrained(s.model, **lengths)


def _passage_table(ctx: steps.Context, s: Any, store: Any) -> Any:
    """The frozen passage side a ``query_only`` student reads (``None`` in full mode): the cached passage
    vectors ``store``, or for an ERNIE-Search student the start model's cached token states (its ColBERT
    head needs passage tokens; their pooled vectors are the same as ``store``'s)."""
    if s.train_mode != "query_only":
        return None
    if s.architecture == "ernie":
        return steps.passage_token_states(ctx, s.model, s.passage_max_length, "student")
    return store


def _student_settings(s: Any) -> dict[str, Any]:
    """The student section as a dict, without the sections that are off or at their defaults: a run
    that does not use them keeps the cache key it had before they existed."""
    settings = asdict(s)
    del settings["save_steps"]  # where training may resume from does not change the model
    for name in ("dark_examples", "self_paced"):
        if not settings[name]["enabled"]:
            del settings[name]
    if settings["architecture"] == "dense":
        del settings["architecture"], settings["colbert_dim"]
    return settings


def _student_run(ctx: steps.Context, model_dir: Path, zero_shot_store: Any) -> dict[str, float]:
    from densekd.encoders.dense import DenseEncoder

    encoder = DenseEncoder.from_pretrained(model_dir)
    if ctx.cfg.student.train_mode == "query_only":
        # the passage tower is frozen: the base model's cached corpus vectors are the student's
        store = zero_shot_store
    else:
        store = steps.corpus_embeddings(ctx, str(model_dir), ctx.cfg.student.passage_max_length, "student")
    return evaluate(steps.dense_run(encoder, store, ctx), ctx.eval_qrels, steps.METRICS)


def run_pipeline(cfg: PipelineConfig, until: str | None = None) -> dict[str, Any]:
    """Run every step (reusing cached ones) and write metrics.json and report.md; returns the metrics.

    Parameters
    ----------
    cfg
        The pipeline configuration.
    until
        Stop after this stage (``"mine"``, ``"teacher"``, ``"annotate"`` or ``"student"``) and return
        the step timings only; ``None`` runs everything.
    """
    from densekd.encoders.dense import DenseEncoder

    ctx = steps.load_context(cfg)
    ctx.out.mkdir(parents=True, exist_ok=True)
    train_run, eval_run, bm25_key = steps.bm25_runs(ctx)
    groups, mined_key = steps.mine(ctx, train_run, bm25_key)
    if until == "mine":
        return {"steps": ctx.timings}
    scorer = steps.teacher(ctx, groups, mined_key)
    # the teacher's own dev quality comes first: distillation figures only count if it beats BM25
    teacher_dev = steps.teacher_dev_run(ctx, scorer, eval_run, bm25_key)
    if until == "teacher":
        ce_only = steps.teacher_dev_metrics(ctx, teacher_dev, eval_run, None, None, {"cross_encoder": 1.0})
        return {"steps": ctx.timings, "rows": {"bm25": evaluate(eval_run, ctx.eval_qrels, steps.METRICS),
                                               "cross-encoder rerank": ce_only["fused"]}}
    scored = steps.annotate_groups(ctx, groups, mined_key, scorer)
    if cfg.student.dark_examples.enabled:
        scored = steps.dark_examples(ctx, groups, scored, mined_key, scorer)
    if until == "annotate":
        return {"steps": ctx.timings}
    base = cfg.student.model
    base_encoder = DenseEncoder.from_pretrained(base, passage_max_length=cfg.student.passage_max_length)
    zero_shot_store = steps.corpus_embeddings(ctx, base, cfg.student.passage_max_length, "base")
    scored = steps.fuse_groups(ctx, scored, train_run, base_encoder, zero_shot_store)
    store = zero_shot_store
    if cfg.student.train_mode == "query_only":  # dark examples need frozen vectors too
        store = steps.query_only_table(ctx, scored, zero_shot_store, base, cfg.student.passage_max_length)
    model_dir, student_summary = train_student(ctx, scored, store)
    if until == "student":
        return {"steps": ctx.timings, "student": student_summary}

    teacher_rows = steps.teacher_dev_metrics(ctx, teacher_dev, eval_run, base_encoder, zero_shot_store)
    start = time.perf_counter()
    rows = {"bm25": evaluate(eval_run, ctx.eval_qrels, steps.METRICS)}
    rows["zero-shot dense"] = evaluate(steps.dense_run(base_encoder, zero_shot_store, ctx), ctx.eval_qrels,
                                       steps.METRICS)
    depth = cfg.teacher.rerank_depth
    rows[f"cross-encoder rerank (BM25 top {depth})"] = teacher_rows["cross_encoder"]
    rows[f"teacher signal {cfg.teacher.fusion} (BM25 top {depth})"] = teacher_rows["fused"]
    rows["distilled student"] = _student_run(ctx, model_dir, zero_shot_store)
    ctx.record("evaluate", start, False)

    result = {"name": cfg.name, "rows": rows, "student": student_summary, "steps": ctx.timings}
    write_json(ctx.out / "metrics.json", result)
    _write_report(ctx, result, scored, model_dir.parent)
    return result


def _write_report(ctx: steps.Context, result: dict[str, Any], scored: list[TrainGroup], student_dir: Path) -> None:
    history_file = student_dir / "log_history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    has_training = report.plot_training(history, ctx.out / "training.png")
    pos = [g.teacher_scores[p] for g in scored for p in g.pos_ids if g.teacher_scores]
    # synthetic candidates (ADAM dark examples) apart: the point is that they score between the two
    neg, dark = [], []
    for g in scored:
        for n in g.neg_ids if g.teacher_scores else []:
            (dark if n in (g.extra_passages or {}) else neg).append(g.teacher_scores[n])
    has_scores = report.plot_teacher_scores({"positives": pos, "negatives": neg, "dark examples": dark},
                                            ctx.out / "teacher_scores.png")
    timing_rows = {name: {"seconds": t["seconds"], "cached": "yes" if t["cached"] else "no"}
                   for name, t in result["steps"].items()}
    steps_table = "| step | seconds | reused from cache |\n|---|---|---|\n" + "".join(
        f"| {n} | {v['seconds']} | {v['cached']} |\n" for n, v in timing_rows.items())
    sections = [
        (f"Results on {ctx.cfg.data.eval_split}", report.metrics_table(result["rows"], steps.METRICS)
         + f"\nData: `{ctx.cfg.data.root}`, {len(ctx.eval_qrels)} {ctx.cfg.data.eval_split} queries, "
           f"{len(ctx.corpus)} passages; {len(scored)} training queries.\n"),
        ("Steps", steps_table),
        ("Student training", (f"{result['student']}\n\n" + ("![training](training.png)\n" if has_training else ""))),
        ("Teacher scores", "![teacher scores](teacher_scores.png)\n" if has_scores else "no scores\n"),
    ]
    report.write_report(ctx.out / "report.md", f"densekd run: {ctx.cfg.name}", sections)
