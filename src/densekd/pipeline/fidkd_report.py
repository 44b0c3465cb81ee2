"""Markdown report and plots of a reader -> retriever run (:mod:`densekd.pipeline.fidkd`).

Inputs are the ``result`` dict of :func:`~densekd.pipeline.fidkd.run_fidkd` (``bm25``: answer recall of
BM25; ``iterations``: one metrics dict per iteration) and the last iteration's scored TrainGroups.
Outputs in ``output_dir``: ``report.md``, ``iterations.png`` (metrics per iteration, BM25 as
iteration 0), ``reader_scores.png`` (reader scores of passages with / without an answer) and
``training.png`` (the last retriever's loss curve).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from densekd.data.types import TrainGroup  # noqa: E402
from densekd.eval.qa import has_answer  # noqa: E402
from densekd.pipeline import report  # noqa: E402

COLUMNS = ["answer_recall@1", "answer_recall@5", "answer_recall@20", "reader_em", "reader_f1",
           "top_attention_has_answer", "train_top_attention_has_answer"]


def rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``system -> metrics``: BM25, then ``iteration n`` for every iteration."""
    out = {"bm25": result["bm25"]}
    out.update({f"iteration {row['iteration']}": row for row in result["iterations"]})
    return out


def summary_table(result: dict[str, Any]) -> str:
    """The per-iteration Markdown table (also printed by ``densekd run``)."""
    return report.metrics_table(rows(result), COLUMNS)


def plot_iterations(result: dict[str, Any], path: Path) -> bool:
    """Line plot of every metric against the iteration (BM25 = 0, retrieval metrics only)."""
    its = result["iterations"]
    if not its:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in COLUMNS:
        points = ([(0, result["bm25"][name])] if name in result["bm25"] else []) \
            + [(row["iteration"], row[name]) for row in its if name in row]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xticks(range(len(its) + 1))
    ax.set_xlabel("iteration (0 = BM25)")
    ax.set_ylim(0, 1.02)
    ax.set_title("dev metrics per iteration")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(ctx: Any, result: dict[str, Any], groups: list[TrainGroup]) -> None:
    """Write ``report.md`` and its PNGs into ``ctx.out`` (``ctx``: a :class:`~densekd.pipeline.qa_data.QAContext`)."""
    out: Path = ctx.out
    has_plot = plot_iterations(result, out / "iterations.png")
    with_answer, without = [], []
    for g in groups:  # the teacher signal: do passages holding an answer get higher reader scores?
        for pid, score in (g.teacher_scores or {}).items():
            hit = has_answer(ctx.corpus[pid].text, ctx.queries[g.qid].answers)
            (with_answer if hit else without).append(score)
    has_scores = report.plot_teacher_scores({"passage has an answer": with_answer, "no answer": without},
                                            out / "reader_scores.png")
    last = len(result["iterations"])
    history_file = out / f"iter_{last}" / "retriever" / "log_history.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    has_training = report.plot_training(history, out / "training.png")
    cfg = ctx.cfg
    steps_table = "| step | seconds | reused from cache |\n|---|---|---|\n" + "".join(
        f"| {name} | {t['seconds']} | {'yes' if t['cached'] else 'no'} |\n" for name, t in result["steps"].items())
    sections = [
        (f"Results on {cfg.data.eval_split}", summary_table(result)
         + f"\nData: `{cfg.data.root}`, {result['questions']['eval']} {cfg.data.eval_split} questions, "
           f"{len(ctx.corpus)} passages; {result['questions']['train']} training questions (answers only, no "
           f"passage labels); k = {cfg.retrieval.k} passages per question; reader scoring "
           f"`{cfg.teacher.scoring}` (normalize: {cfg.teacher.normalize}); retriever loss `{cfg.retriever.loss}` ({cfg.retriever.train_mode}).\n\n"
           "Row n: retriever n's answer recall; reader n (trained on retriever n-1's passages) answering from "
           "retriever n's top k; `top_attention_has_answer`: the passage reader n scores highest among them "
           "holds an answer (`train_`: the same on the training questions, over the passages it was trained "
           "on, i.e. the label quality the retriever learns from).\n"
         + ("\n![iterations](iterations.png)\n" if has_plot else "")),
        ("Reader scores (last iteration, training questions)",
         "![reader scores](reader_scores.png)\n" if has_scores else "no scores\n"),
        (f"Retriever training (iteration {last})", "![training](training.png)\n" if has_training else "no log\n"),
        ("Steps", steps_table),
    ]
    report.write_report(out / "report.md", f"densekd run (reader -> retriever): {cfg.name}", sections)
