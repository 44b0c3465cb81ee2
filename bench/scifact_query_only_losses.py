"""Which student loss pays on SciFact? Query-side-only students, several seeds, one table.

Usage::

    python bench/scifact_query_only_losses.py --set student.passage_max_length=128
    python bench/scifact_query_only_losses.py --smoke

Every row trains the query tower of all-MiniLM-L6-v2 against the cached, frozen zero-shot passage
vectors (``student.train_mode: query_only``), on the same mined groups (BM25 top 50, 7 negatives per
item, re-sampled each epoch) and the same teacher logits as ``bench/distill_vs_st.py`` (its
``prepare``: every one-time cost is reused from the cache), for ``--epochs`` at ``--lr``, with seeds
``--seeds``:

* ``contrastive``: InfoNCE over in-batch + hard negatives (qrels positives, no teacher);
* ``kl``: KL to the teacher signal alone (the config's KL settings);
* ``kl+contrastive_0.1``: the shipped config's loss (KL + 0.1 InfoNCE);
* ``kl+contrastive_1.0``: KL + InfoNCE at equal weight.

Writes bench/results/scifact_query_only_losses.{json,md,png} (``--smoke``: bench/results/smoke/).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from distill_vs_st import SMOKE_ROOT, build_config, kl_options, prepare, query_only_student  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.pipeline import steps  # noqa: E402

NAME = "scifact_query_only_losses"
METRICS = ("ndcg@10", "recall@100")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-kd.yaml", "scifact", "bench-scifact-query-only-losses")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--smoke-dev-queries", type=int, default=20)
    ap.add_argument("--smoke-extra-docs", type=int, default=200)
    args = ap.parse_args()
    args.rerank_depth = 100  # read by build_config; the teacher's dev rerank is not used here
    if args.smoke:
        args.out_dir, args.seeds, args.epochs = str(SMOKE_ROOT / "runs-losses"), args.seeds[:2], 1.0
    return args


def losses(cfg: Any) -> dict[str, dict[str, Any]]:
    """Row name -> student loss spec."""
    kl = {"weight": 1.0, **kl_options(cfg)}
    temp = float((cfg.student.loss.get("contrastive") or {}).get("temperature", 0.05))
    return {"contrastive": {"contrastive": {"temperature": temp}},
            "kl": {"kl": kl},
            "kl+contrastive_0.1": {"kl": kl, "contrastive": {"weight": 0.1, "temperature": temp}},
            "kl+contrastive_1.0": {"kl": kl, "contrastive": {"weight": 1.0, "temperature": temp}}}


def run_row(p: Any, args: argparse.Namespace, name: str, loss: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one query-only student (cached on its key) and evaluate it on dev."""
    out = Path(args.out_dir) / f"{name}-seed{seed}"
    metrics, summary = query_only_student(p, out, loss, p.scored, args.epochs, args.lr, seed)
    print(f"[{name} seed {seed}] nDCG@10 {metrics['ndcg@10']:.3f} R@100 {metrics['recall@100']:.3f}", flush=True)
    return {"seed": seed, **metrics, "train_seconds": summary["train_seconds"], "steps": summary["steps"],
            "cached": p.ctx.timings["student"]["cached"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and (population) standard deviation over seeds of every metric."""
    out: dict[str, float] = {}
    for m in steps.METRICS:
        vals = np.array([r[m] for r in runs])
        out[m], out[f"{m}_std"] = float(vals.mean()), float(vals.std())
    return out


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    began = time.perf_counter()
    p = prepare(cfg)
    baselines = {"bm25": evaluate(p.eval_run, p.ctx.eval_qrels, steps.METRICS),
                 "zeroshot": evaluate(steps.dense_run(p.base_encoder, p.zero_shot_store, p.ctx), p.ctx.eval_qrels,
                                      steps.METRICS)}
    rows, per_seed = {}, {}
    for name, loss in losses(cfg).items():
        per_seed[name] = [run_row(p, args, name, loss, seed) for seed in args.seeds]
        rows[name] = {"loss": loss, **summarise(per_seed[name])}
    result = {"baselines": baselines, "rows": rows, "per_seed": per_seed,
              "settings": {"seeds": args.seeds, "epochs": args.epochs, "lr": args.lr, "overrides": args.overrides,
                           "teacher_fusion": dict(cfg.teacher.fusion), "student": dataclasses.asdict(cfg.student)},
              "wall_seconds": round(time.perf_counter() - began, 1), "provenance": provenance()}
    out = RESULTS / "smoke" if args.smoke else RESULTS
    write_results(NAME, result, markdown(result), out)
    plot(result, out / f"{NAME}.png")
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    table = [[n, r["baselines"][n]["ndcg@10"], "", r["baselines"][n]["recall@100"], ""] for n in ("bm25", "zeroshot")]
    table += [[n, v["ndcg@10"], v["ndcg@10_std"], v["recall@100"], v["recall@100_std"]] for n, v in r["rows"].items()]
    return (f"SciFact dev; query-side-only students (frozen zero-shot passage vectors, max length "
            f"{s['student']['passage_max_length']}), {s['epochs']:g} epochs, lr {s['lr']}, batch "
            f"{s['student']['batch_size']} x group {s['student']['group_size']}, seeds {s['seeds']}; teacher signal "
            f"{s['teacher_fusion']}. Mean and std over seeds.\n\n"
            + markdown_table(["row", "nDCG@10", "std", "R@100", "std"], table)
            + f"\nTotal wall time {r['wall_seconds']:.0f} s.\n\n![plot]({NAME}.png)\n")


def plot(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(r["rows"])
    x = np.arange(len(names))
    for i, m in enumerate(METRICS):
        ax.bar(x + (i - 0.5) * 0.4, [r["rows"][n][m] for n in names], width=0.4,
               yerr=[r["rows"][n][f"{m}_std"] for n in names], label=m, capsize=3)
    for n, ls in (("bm25", "--"), ("zeroshot", ":")):
        ax.axhline(r["baselines"][n]["ndcg@10"], color="black", ls=ls, lw=0.9, label=f"{n} nDCG@10")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("SciFact dev, query-side-only students")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
