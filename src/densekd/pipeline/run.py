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

import dataclasses
import json
import time
from pathlib import Path
from typing import Any


from densekd.data.io import write_json
from densekd.data.types import Run, TrainGroup
from densekd.eval.metrics import evaluate
from densekd.losses.combine import loss_kinds
from densekd.pipeline import report, steps
from densekd.pipeline.config import PipelineConfig
from densekd.pipeline.label_dense import member_length
from densekd.pipeline.student import (  # noqa: F401 (train_student re-exported for the benches)
    _student_settings,
    student_dev_run,
    train_student,
)
from densekd.pipeline.teacher_signal import teacher_dev_runs


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
    from densekd.pipeline.candidates import mined_groups

    m = mined_groups(cfg, with_store=until in (None, "student"))  # query_only students read the store
    ctx, eval_run, bm25_key = m.ctx, m.eval_run, m.bm25_key
    base_encoder, zero_shot_store = m.base_encoder, m.store
    groups, mined_key = m.groups, m.mined_key
    ctx.out.mkdir(parents=True, exist_ok=True)
    uses = cfg.teacher.uses
    if until == "mine":
        return {"steps": ctx.timings}
    scorer = steps.teacher(ctx, groups, mined_key) if "cross_encoder" in uses else None
    label_dense = m.members() if "label_dense" in uses else None
    # the teacher's own dev quality comes first: distillation figures only count if it beats the students
    ce_dev = steps.teacher_dev_run(ctx, scorer, eval_run, bm25_key) if scorer is not None else None
    first = m.first_stage(cfg.teacher.rerank_depth)
    teacher_runs = teacher_dev_runs(ctx, ce_dev, eval_run, base_encoder, zero_shot_store,
                                    label_dense=label_dense, dense_eval_run=first[1] if len(first) > 1 else None)
    if until == "teacher":
        named = {"bm25": eval_run, "teacher rerank": teacher_runs["fused"]}
        if "cross_encoder" in teacher_runs:
            named["cross-encoder rerank"] = teacher_runs["cross_encoder"]
        return {"steps": ctx.timings, "rows": {n: evaluate(r, ctx.eval_qrels, steps.METRICS) for n, r in named.items()}}
    scored = steps.annotate_groups(ctx, groups, mined_key, scorer) if scorer is not None else groups
    if cfg.student.dark_examples.enabled:
        scored = steps.dark_examples(ctx, groups, scored, mined_key, scorer)
    if until == "annotate":
        return {"steps": ctx.timings}
    scored, store = fused_groups(ctx, scored, base_encoder, zero_shot_store, label_dense)
    model_dir, student_summary = train_student(ctx, scored, store)
    if until == "student":
        return {"steps": ctx.timings, "student": student_summary}

    start = time.perf_counter()
    runs = system_runs(ctx, eval_run, base_encoder, zero_shot_store, label_dense, teacher_runs, model_dir)
    rows = {name: evaluate(run, ctx.eval_qrels, steps.METRICS) for name, run in runs.items()}
    write_runs(ctx.out / "runs", runs)
    export_sentence_transformers(model_dir, ctx.out / "sentence-transformers")
    ctx.record("evaluate", start, False)

    result = {"name": cfg.name, "split": cfg.data.eval_split, "rows": rows,
              "student_row": student_label(cfg.student.loss), "student": student_summary,
              "teacher_fusion": dict(cfg.teacher.fusion), "steps": ctx.timings}
    write_json(ctx.out / "metrics.json", result)
    _write_report(ctx, result, scored, model_dir.parent)
    return result


def fused_groups(ctx: steps.Context, scored: list[TrainGroup], base_encoder: Any, zero_shot_store: Any,
                 label_dense: Any = None) -> tuple[list[TrainGroup], Any]:
    """The training groups with the configured fused teacher signal, and what the student trains against.

    ``scored``: the mined groups, with cross-encoder logits when the fusion weighs one, and ADAM dark
    examples (``extra_passages``) when configured. Returns the groups with fused ``teacher_scores`` and
    the passage vectors of a ``query_only`` student (the zero-shot corpus vectors, plus the dark
    examples' frozen vectors when there are any; ``zero_shot_store`` in full mode). Members that read
    passages at their own length score dark examples from vectors at that length.
    """
    cfg = ctx.cfg
    frozen = zero_shot_store
    if cfg.student.train_mode == "query_only" or cfg.teacher.uses & {"dense", "label_dense"}:
        # dark examples need frozen vectors too: to train against, and for the dense members to score them
        frozen = steps.query_only_table(ctx, scored, zero_shot_store, cfg.student.model, cfg.student.passage_max_length)
    if label_dense is not None and label_dense.store is not None:  # members at their own passage length
        label_dense = dataclasses.replace(label_dense, store=steps.query_only_table(
            ctx, scored, label_dense.store, cfg.student.model, member_length(cfg.teacher.label_dense, cfg.student)))
    fused = steps.fuse_groups(ctx, scored, base_encoder, frozen, label_dense)
    return fused, frozen if cfg.student.train_mode == "query_only" else zero_shot_store


def student_label(loss: dict[str, Any]) -> str:
    """What trained the student, for its row name: a labels-only loss does not make a distilled student.

    Each term is named by its ``type`` (its key when absent); a term of weight 0 is off and not named.

    Examples
    --------
    >>> student_label({"kl": {"weight": 0}, "contrastive": {}})
    'labels-only student (InfoNCE)'
    >>> student_label({"kl": {}, "hard_ce": {"type": "contrastive", "use_in_batch": False}})
    'distilled student (KL + InfoNCE)'
    """
    kinds = loss_kinds(loss, live_only=True)
    teacher_losses = sorted(kinds - {"contrastive"})
    if not teacher_losses:
        return "labels-only student (InfoNCE)"
    names = {"kl": "KL", "margin_mse": "MarginMSE", "mse": "MSE", "listnet": "ListNet", "ranknet": "RankNet",
             "ernie": "ERNIE-Search", "margin_ranking": "margin ranking"}
    parts = [names.get(k, k) for k in teacher_losses] + (["InfoNCE"] if "contrastive" in kinds else [])
    return f"distilled student ({' + '.join(parts)})"


def system_runs(ctx: steps.Context, eval_run: Run, base_encoder: Any, zero_shot_store: Any, label_dense: Any,
                teacher_runs: dict[str, Run], model_dir: Path) -> dict[str, Run]:
    """Every reported system's run on the evaluation queries, in report order."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.index.hybrid import fuse

    cfg = ctx.cfg
    runs = {"bm25": eval_run, "zero-shot dense": steps.dense_run(base_encoder, zero_shot_store, ctx)}
    if label_dense is not None:  # the labels-only reference: a teacher member trained on every training query
        member = DenseEncoder.from_pretrained(label_dense.full_models[0])
        length = member_length(ctx.cfg.teacher.label_dense, ctx.cfg.student)
        runs[f"labels-only student (teacher member, InfoNCE, query-side, passages {length})"] = \
            steps.dense_run(member, label_dense.vectors(zero_shot_store), ctx)
    if "cross_encoder" in teacher_runs:
        runs[f"cross-encoder rerank (top {cfg.teacher.rerank_depth})"] = teacher_runs["cross_encoder"]
    fusion = " + ".join(f"{w:g} {n}" for n, w in cfg.teacher.fusion.items() if w > 0)
    runs[f"teacher rerank ({fusion}; top {cfg.teacher.rerank_depth})"] = teacher_runs["fused"]
    name = student_label(cfg.student.loss)
    runs[name] = student = student_dev_run(ctx, model_dir, zero_shot_store)
    # the student fused with BM25 (per-query z-scores), with the BM25 weight the teacher signal uses
    w = cfg.teacher.fusion.get("bm25", 0) or 0.5
    runs[f"{name} + {w:g} BM25 hybrid"] = fuse([student, eval_run], [1.0, w], method="zscore", k=100)
    return runs


def write_runs(folder: Path, runs: dict[str, Run]) -> None:
    """One TREC run file per system, named after its row (atomic writes)."""
    import re

    from densekd.data.trec import write_run

    folder.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80]
        write_run(folder / f"{slug}.trec", run, tag=slug[:32])


def export_sentence_transformers(model_dir: Path, out: Path) -> None:
    """The student as a sentence-transformers folder (a query/document ``Router`` for separate towers);
    built beside ``out`` and renamed into place, so an existing export survives a failure."""
    import shutil
    import tempfile

    from densekd.encoders.dense import DenseEncoder

    tmp = Path(tempfile.mkdtemp(prefix=".st-", dir=out.parent))
    try:
        DenseEncoder.from_pretrained(model_dir).export_sentence_transformers(tmp / "model")
        if out.exists():  # moved aside, not deleted, until the new export is in place
            out.rename(tmp / "previous")
        (tmp / "model").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    split = ctx.cfg.data.eval_split
    sections = [
        (f"Results on {split}", report.metrics_table(result["rows"], steps.METRICS)
         + f"\nData: `{ctx.cfg.data.root}`, {len(ctx.eval_qrels)} {split} queries, "
           f"{len(ctx.corpus)} passages; {len(scored)} training queries. Each system's TREC run file is in "
           f"`runs/`; the student as a sentence-transformers model in `sentence-transformers/` "
           f"(`encode_query` / `encode_document`).\n"),
        ("Steps", steps_table),
        ("Student training", (f"{result['student']}\n\n" + ("![training](training.png)\n" if has_training else ""))),
        ("Teacher scores", "![teacher scores](teacher_scores.png)\n" if has_scores else "no scores\n"),
    ]
    report.write_report(ctx.out / "report.md", f"densekd run: {ctx.cfg.name}", sections)
