"""Analysis: the reader -> retriever bench's stored dev runs judged by the gold paragraphs as well as by answers.

Usage::

    python bench/fidkd_squad_qrels.py --out-dir runs/bench-fidkd-squad-all --results-name fidkd_squad_all_qrels

``bench/fidkd_squad.py`` judges every retriever by *answer recall*: a passage counts when it holds an
answer string. That metric could favour the distilled retriever over its gold-trained twin for a reason
that is not the teacher's knowledge: the reader's scores point at any answer-holding passage, the way the
metric counts, while the gold twin learns one paragraph per question. This script re-reads the dev runs
the bench wrote (nothing is trained or encoded; seconds) and scores each system both ways:

* answer R@1 / R@5 (as the bench; all dev questions with answers),
* the gold paragraph of ``qrels/<split>.tsv`` (one per squad-open question): R@1 (the top passage *is*
  the gold paragraph), MRR@10 and nDCG@10 (:func:`densekd.eval.evaluate`).

Systems, where their run exists under ``--out-dir`` (the bench's layout): ``bm25`` (``iter_0``),
``zeroshot``, ``iteration_<n>`` (the loop), ``gold_trained`` (``gold/iter_0``), and the seed arms
``distilled`` (iteration 1 + ``seeds/distilled_<s>``) and ``gold_trained`` (+ ``seeds/gold_<s>``) with
mean ± std over seeds, per-seed differences, and a paired bootstrap over dev questions of the seed-averaged
hits (distilled minus gold). Writes ``bench/results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import REPO, RESULTS, SHARED_DATA, markdown_table, paired_bootstrap, provenance, write_results  # noqa: E402
from densekd.data.beir import load_corpus, load_qrels, load_queries  # noqa: E402
from densekd.data.trec import load_run  # noqa: E402
from densekd.data.types import Run, top_k  # noqa: E402
from densekd.eval import evaluate  # noqa: E402
from densekd.eval.qa import answer_recall, has_answer  # noqa: E402

QRELS_METRICS = ["recall@1", "mrr@10", "ndcg@10"]
COLUMNS = ["answer_recall@1", "answer_recall@5", "recall@1", "mrr@10", "ndcg@10"]
BOOTSTRAP = 2000


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "runs" / "bench-fidkd-squad-all"),
                    help="the --out-dir of a bench/fidkd_squad.py run (its dev runs are read, nothing written)")
    ap.add_argument("--data-root", default=str(SHARED_DATA / "squad-open"), help="squad-open folder")
    ap.add_argument("--split", default="dev", help="qrels split the runs were evaluated on")
    ap.add_argument("--own-seed", type=int, default=42,
                    help="retriever seed of the loop's own iteration 1 and gold rows (the bench's retriever.seed)")
    ap.add_argument("--results-name", default="fidkd_squad_qrels", help="bench/results/<name>.{json,md,png}")
    return ap.parse_args()


def find_runs(out: Path, own_seed: int) -> tuple[dict[str, Path], dict[str, dict[int, Path]]]:
    """Single systems ``name -> dev.trec`` and seed arms ``arm -> seed -> dev.trec`` (the bench's layout)."""
    single = {"bm25": out / "iter_0" / "runs" / "dev.trec", "zeroshot": out / "zeroshot" / "iter_0" / "runs" / "dev.trec",
              "gold_trained": out / "gold" / "iter_0" / "runs" / "dev.trec"}
    for folder in sorted(out.glob("iter_[1-9]*")):
        single[f"iteration_{folder.name[5:]}"] = folder / "runs" / "dev.trec"
    single = {k: v for k, v in single.items() if v.is_file()}
    arms: dict[str, dict[int, Path]] = {"distilled": {}, "gold_trained": {}}
    for arm, own in (("distilled", "iteration_1"), ("gold_trained", "gold_trained")):
        if own in single:
            arms[arm][own_seed] = single[own]
    for path in sorted(out.glob("seeds/*/iter_0/runs/dev.trec")):
        m = re.fullmatch(r"(distilled|gold)_(\d+)", path.parts[-4])
        if m:
            arms["distilled" if m[1] == "distilled" else "gold_trained"][int(m[2])] = path
    return single, {a: s for a, s in arms.items() if s}


def score(run: Run, qids: list[str], queries: Any, corpus: Any, qrels: Any) -> tuple[dict[str, float], np.ndarray,
                                                                                       np.ndarray]:
    """Both kinds of metric for ``run``, and per question (``qids`` order) its answer and gold-paragraph hits at 1."""
    row = {**answer_recall(run, {q: queries[q] for q in qids}, corpus, (1, 5)),
           **evaluate(run, {q: qrels[q] for q in qids}, QRELS_METRICS)}
    tops = [top_k(run.get(q) or {}, 1) for q in qids]
    answer = np.array([bool(t) and has_answer(corpus[t[0][0]].text, queries[q].answers) for q, t in zip(qids, tops)],
                      dtype=float)
    gold = np.array([bool(t) and qrels[q].get(t[0][0], 0) > 0 for q, t in zip(qids, tops)], dtype=float)
    return row, answer, gold


def seed_summary(per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    vals = {m: [r[m] for r in per_seed.values()] for m in COLUMNS}
    return {"per_seed": {str(s): r for s, r in sorted(per_seed.items())},
            **{f"{m}_mean": float(np.mean(v)) for m, v in vals.items()},
            **{f"{m}_std": float(np.std(v)) for m, v in vals.items()}}


def compare_arms(arms: dict[str, dict[int, Path]], load: Any) -> dict[str, Any] | None:
    """Distilled vs gold-trained over the seeds both arms have: per arm mean ± std, per-seed differences, and
    a paired bootstrap (dev questions resampled) of the seed-averaged hits at 1, by answer and by gold paragraph."""
    seeds = sorted(set(arms.get("distilled", {})) & set(arms.get("gold_trained", {})))
    if not seeds:
        return None
    out: dict[str, Any] = {"seeds": seeds}
    hits: dict[str, dict[str, list[np.ndarray]]] = {}
    for arm in ("distilled", "gold_trained"):
        rows = {}
        hits[arm] = {"answer": [], "gold": []}
        for s in seeds:
            rows[s], a, g = load(arms[arm][s])
            hits[arm]["answer"].append(a)
            hits[arm]["gold"].append(g)
        out[arm] = seed_summary(rows)
    for m in COLUMNS:
        diff = [out["distilled"]["per_seed"][str(s)][m] - out["gold_trained"]["per_seed"][str(s)][m] for s in seeds]
        out.setdefault("distilled_minus_gold", {})[m] = {"per_seed": diff, "mean": float(np.mean(diff)),
                                                         "std": float(np.std(diff))}
    out["bootstrap_seed_mean_hits"] = {
        kind: paired_bootstrap(np.mean(hits["distilled"][kind], axis=0), np.mean(hits["gold_trained"][kind], axis=0),
                               BOOTSTRAP) for kind in ("answer", "gold")}
    return out


def markdown(result: dict[str, Any]) -> str:
    head = ["system", "answer R@1", "answer R@5", "gold paragraph R@1", "MRR@10", "nDCG@10"]
    body = (f"{result['questions']} {result['split']} questions of squad-open; runs read from "
            f"`{result['out_dir']}` (written by `bench/fidkd_squad.py`). Answer R@k: an answer string in the top k; "
            f"gold paragraph: the paragraph of `qrels/{result['split']}.tsv`.\n\n")
    body += markdown_table(head, [[n, *[r[m] for m in COLUMNS]] for n, r in result["systems"].items()])
    cmp = result.get("seeds")
    if cmp:
        rows = [[f"{arm} (seeds {', '.join(map(str, cmp['seeds']))})",
                 *[f"{cmp[arm][m + '_mean']:.3f} ± {cmp[arm][m + '_std']:.3f}" for m in COLUMNS]]
                for arm in ("distilled", "gold_trained")]
        d = cmp["distilled_minus_gold"]
        rows.append(["distilled - gold, per seed", *[f"{d[m]['mean']:+.3f} ± {d[m]['std']:.3f}" for m in COLUMNS]])
        body += "\n\n## Distilled (reader's scores) vs gold-trained (gold paragraphs): same questions, recipe, steps, seeds\n\n"
        body += markdown_table(head, rows)
        b = cmp["bootstrap_seed_mean_hits"]
        body += ("\n\nPaired bootstrap over dev questions of the seed-averaged hit at 1 (distilled minus gold, "
                 f"{BOOTSTRAP} resamples): answer {b['answer']['delta']:+.3f} "
                 f"[{b['answer']['ci95'][0]:+.3f}, {b['answer']['ci95'][1]:+.3f}], gold paragraph "
                 f"{b['gold']['delta']:+.3f} [{b['gold']['ci95'][0]:+.3f}, {b['gold']['ci95'][1]:+.3f}].\n")
    return body + "\n![plot](" + result["results_name"] + ".png)\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Answer R@1 beside gold-paragraph R@1 per system, and per seed arm its mean with the seed std as error bar."""
    bars = [(n, {m: (r[m], 0.0) for m in COLUMNS}) for n, r in result["systems"].items()]
    cmp = result.get("seeds")
    if cmp and len(cmp["seeds"]) > 1:
        bars += [(f"{arm}\n(mean of {len(cmp['seeds'])} seeds)",
                  {m: (cmp[arm][m + "_mean"], cmp[arm][m + "_std"]) for m in COLUMNS})
                 for arm in ("distilled", "gold_trained")]
    x = np.arange(len(bars))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(bars)), 3.8))
    for i, (m, label) in enumerate((("answer_recall@1", "answer R@1"), ("recall@1", "gold paragraph R@1"))):
        ax.bar(x + (i - 0.5) * 0.38, [v[m][0] for _, v in bars], 0.38, yerr=[v[m][1] for _, v in bars],
               capsize=3, label=label)
    ax.set_xticks(x, [n for n, _ in bars], rotation=20, ha="right")
    ax.set_ylim(0.5, 0.9)
    ax.set_title(f"squad-open {result['split']}: each retriever judged by answers and by gold paragraphs")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    root, out = Path(args.data_root), Path(args.out_dir)
    corpus, queries = load_corpus(root / "corpus.jsonl"), load_queries(root / "queries.jsonl")
    qrels = load_qrels(root / "qrels" / f"{args.split}.tsv", corpus=corpus, queries=queries)
    qids = [q for q in qrels if queries[q].answers]
    single, arms = find_runs(out, args.own_seed)
    if not single:
        raise SystemExit(f"fidkd_squad_qrels: error: {out}: no dev run of bench/fidkd_squad.py found")
    cache: dict[Path, tuple[dict[str, float], np.ndarray, np.ndarray]] = {}

    def load(path: Path) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        if path not in cache:
            cache[path] = score(load_run(path), qids, queries, corpus, qrels)
        return cache[path]

    result = {"split": args.split, "questions": len(qids), "out_dir": os.path.relpath(out, REPO),
              "systems": {name: load(path)[0] for name, path in single.items()},
              "seeds": compare_arms(arms, load), "results_name": args.results_name, "provenance": provenance()}
    plot(result, RESULTS / f"{args.results_name}.png")
    print(markdown(result))
    print("wrote", write_results(args.results_name, result, markdown(result)))


if __name__ == "__main__":
    main()
