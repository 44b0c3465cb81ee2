"""The Markdown report of a ``densekd run``: comparison table and PNG plots.

Inputs are plain data: ``rows`` maps a system name to its metric dict (``{"ndcg@10": x, ...}``);
``log_history`` is the HF Trainer's ``state.log_history`` (list of dicts with ``step`` and ``loss``,
the loss components, and ``eval_*`` entries from :class:`densekd.training.callbacks.RetrievalEvalCallback`);
``teacher_scores`` holds raw teacher logits of positives and negatives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training(log_history: list[dict[str, Any]], path: Path) -> bool:
    """Loss (and components) and, when the run evaluated during training, dev-metric curves over steps.

    Returns False when there is nothing to plot. A run without evaluations gets the loss panel alone
    (no empty panel).
    """
    losses = [h for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if any(k.startswith("eval_") for k in h)]
    metric_keys = sorted({k for h in evals for k in h if k.startswith("eval_") and not k.endswith(("runtime", "_per_second"))})
    if not losses and not metric_keys:
        return False
    panels = int(bool(losses)) + int(bool(metric_keys))
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    axes = list(axes[0])
    if losses:
        ax = axes.pop(0)
        steps = [h["step"] for h in losses]
        ax.plot(steps, [h["loss"] for h in losses], label="loss", lw=2)
        for key in sorted({k for h in losses for k in h} - {"loss", "step", "epoch", "learning_rate", "grad_norm"}):
            vals = [h.get(key) for h in losses]
            if all(isinstance(v, (int, float)) for v in vals):
                ax.plot(steps, vals, label=key, lw=1)
        ax.set_xlabel("step")
        ax.set_title("training loss")
        ax.legend(fontsize=8)
    if metric_keys:
        ax = axes.pop(0)
        for key in metric_keys:
            pts = [(h["step"], h[key]) for h in evals if key in h]
            ax.plot(*zip(*pts), marker="o", label=key.removeprefix("eval_"))
        ax.set_xlabel("step")
        ax.set_title("dev metrics during training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def teacher_score_histograms(ax: Any, groups: dict[str, list[float]]) -> None:
    """Draw density histograms of teacher logits per candidate kind on one matplotlib axis (shared bins)."""
    groups = {k: v for k, v in groups.items() if len(v)}
    lo = min(min(v) for v in groups.values())
    hi = max(max(v) for v in groups.values())
    bins = np.linspace(lo, hi, 40)
    for name, vals in groups.items():
        ax.hist(vals, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(vals)})")
    ax.set_xlabel("teacher score (logit)")
    ax.set_ylabel("density")
    ax.set_title("teacher scores on training candidates")
    ax.legend(fontsize=8)


def plot_teacher_scores(groups: dict[str, list[float]], path: Path) -> bool:
    """Histograms of teacher logits per candidate kind (e.g. ``positive``, ``negative``)."""
    if not any(len(v) for v in groups.values()):
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    teacher_score_histograms(ax, groups)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def metrics_table(rows: dict[str, dict[str, float]], metrics: list[str], extra: dict[str, dict[str, Any]] | None = None) -> str:
    """Markdown comparison table; ``extra`` adds per-row columns such as wall time."""
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    header = ["system", *metrics, *extra_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, vals in rows.items():
        cells = [name] + [f"{vals[m]:.3f}" if m in vals else "" for m in metrics]
        cells += [_fmt(extra.get(name, {}).get(c, "")) for c in extra_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """Write ``# title`` followed by ``## heading`` + body for each section."""
    text = f"# {title}\n\n" + "\n".join(f"## {h}\n\n{b}\n" for h, b in sections)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
