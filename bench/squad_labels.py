"""Benchmark: can passage labels beat zero-shot MiniLM on squad-open at all? (issue 14, step 1)

Usage::

    OMP_NUM_THREADS=1 python bench/squad_labels.py                  # paragraphs; 100-word blocks if no clear gain
    OMP_NUM_THREADS=1 python bench/squad_labels.py --smoke          # tiny end-to-end check -> bench/results/smoke/
    OMP_NUM_THREADS=1 python bench/squad_labels.py --seeds 0 1 2 --epochs 3 --corpora paragraphs windows
    # both towers (DPR's recipe: 1 BM25 hard negative + in-batch), results in squad_labels_full.*
    python bench/squad_labels.py --corpora paragraphs --rows gold oracle_nce --epochs 1 \
        --set retriever.train_mode=full --set retrieval.k=2 --name squad_labels_full

Before any teacher (a reader, a cross-encoder) can be judged on squad-open, the benchmark must be one
where *labels* pay: a retriever trained on the right passages has to beat the zero-shot start model.
With 300 training questions it did not (bench/results/fidkd_squad.md: gold 0.692, answer oracle 0.675,
zero-shot 0.701 answer R@1). Here every training question is used, and the epoch is chosen on held-out
*training articles*, never on dev.

Questions (``../shared/data/squad-open``; train and dev share no article):

* dev: every question of ``qrels/dev.tsv`` (1,219); all reported dev figures are on all of them.
* held-out: the questions of whole training articles, drawn at random (seeded) until they are at least
  ``--heldout-fraction`` of the training questions. They pick the epoch (answer R@1) and train nothing.
* fit: every other training question (about 6,600).

Rows, each trained query-side-only by default (the passage tower and its cached corpus vectors stay MiniLM's;
``--set retriever.train_mode=full`` trains both towers and re-encodes the corpus after every epoch) through
the reader -> retriever loop's own steps (:func:`densekd.pipeline.fidkd.train_retriever` and
:func:`~densekd.pipeline.fidkd.retrieve`, ``configs/squad-fidkd.yaml``'s retriever settings: batch 16,
lr 5e-5, BM25 top ``k = 10`` per question as its group):

* ``bm25``, ``zeroshot`` (all-MiniLM-L6-v2 as it is).
* ``gold``: the gold paragraph of ``qrels/train.tsv`` as the positive, BM25's top ``k`` others as hard
  negatives, InfoNCE (temperature 0.05) with in-batch negatives.
* ``oracle_kl``: the loop's retriever step with a perfect answer teacher: each of BM25's top ``k`` gets
  1 if it holds an answer string, else 0; the loop's ``teacher.normalize`` (z-scores) and loss (KL with
  in-batch negatives). Questions with no answer in the top ``k`` are left out (a flat target teaches nothing).
* ``oracle_nce``: the same candidates, InfoNCE with the answer-holding ones as positives (one per
  epoch, rotating) and the others as negatives (answers only, no qrels: DPR's distant supervision).

Epochs: each epoch is one cached pipeline step that continues from the previous epoch's retriever (so
the learning rate warms up and decays to 0 within every epoch: warm restarts); after each, answer
R@1/5/20 on dev and on the held-out articles. Early stopping: the epoch with the best held-out R@1
(``--patience`` epochs without a gain end the row); dev is reported at that epoch. Seeds: mean ± std.
``delta_r1_vs_zeroshot``: paired bootstrap (10,000 resamples of dev questions) of the R@1 difference to
zero-shot, per seed and for the seed average of each question's hit. A *clear gain*: +0.02 or more with
the 95 % interval above 0.

Corpora: ``paragraphs`` (the 2,067 SQuAD paragraphs) and ``windows``: DPR-style disjoint 100-word
blocks of each article's text read in paragraph order (blocks cross paragraph boundaries, as DPR's do);
answers still define relevance, and the gold positives are the blocks overlapping the gold paragraph that
hold an answer. ``--corpora auto`` (default) runs ``windows`` only when no oracle row gains clearly on
``paragraphs``.

Every step is cached under ``--out-dir`` (default ``runs/bench-squad-labels``) and the corpus vectors in
the config's ``cache_dir``. Writes ``bench/results/squad_labels.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import RESULTS, add_pipeline_args, markdown_table, paired_bootstrap, provenance, write_results  # noqa: E402
from fidkd_squad import base_store, make_smoke_data  # noqa: E402

from densekd.cli.config import load_config  # noqa: E402
from densekd.data.trec import load_run  # noqa: E402
from densekd.data.types import Corpus, Passage, TrainGroup, top_k  # noqa: E402
from densekd.eval.qa import answer_recall, has_answer  # noqa: E402
from densekd.pipeline import fidkd  # noqa: E402
from densekd.pipeline.cache import cache_key, read_marker  # noqa: E402
from densekd.pipeline.fidkd_config import FidKDConfig  # noqa: E402
from densekd.pipeline.qa_data import QAContext, load_qa_context, sample_ids  # noqa: E402

NAME = "squad_labels"
KS = fidkd.RECALL_KS
RECALLS = [f"answer_recall@{k}" for k in KS]
ROWS = ("gold", "oracle_kl", "oracle_nce")
LABELS = {"bm25": "BM25", "zeroshot": "zero-shot MiniLM", "gold": "gold passage (qrels), InfoNCE",
          "oracle_kl": "answer oracle, KL (the loop's loss)", "oracle_nce": "answer oracle, InfoNCE"}
CLEAR_GAIN = 0.02
#: the training-group statistics the Markdown shows (the JSON keeps them all)
GROUP_STATS = ("groups", "questions_without_gold", "positives_in_range", "short_queries",
               "dropped_no_answer_in_top_k", "mean_answer_passages")
SMOKE_ROOT = Path(os.environ.get("TMPDIR", "/tmp")) / "densekd-bench-squad-labels-smoke"
SMOKE_SETTINGS = ["retrieval.k=4", "retriever.batch_size=4", "retriever.passage_max_length=64",
                  "retriever.save_steps=0", "encode_batch_size=16"]

#: The config settings this benchmark's recorded results used (the loop's config has moved on to a span
#: reader, k = 5 and a full-mode retriever); ``--set`` still overrides them, as for squad_labels_full
PINNED = ["retrieval.k=10", "retriever.train_mode=query_only", "retriever.group_size=null", "reader.kind=fid",
          "teacher.scoring=fid-kd"]

log = logging.getLogger("squad_labels")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "squad-fidkd.yaml", "squad-open", "bench-squad-labels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (mean ± std over them)")
    ap.add_argument("--epochs", type=int, default=3, help="most epochs per row (early stopping may end sooner)")
    ap.add_argument("--patience", type=int, default=1, help="epochs without a held-out R@1 gain before stopping")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--corpora", nargs="+", default=["auto"], choices=["auto", "paragraphs", "windows"],
                    help="auto: paragraphs, then windows only if no oracle row gains clearly there")
    ap.add_argument("--window-words", type=int, default=100, help="words per block of the windows corpus")
    ap.add_argument("--heldout-fraction", type=float, default=0.1, help="held-out share of training questions")
    ap.add_argument("--train-sample", type=int, default=500, help="fit questions whose recall shows overfitting")
    ap.add_argument("--bootstrap", type=int, default=10_000, help="paired bootstrap resamples")
    ap.add_argument("--smoke", action="store_true", help="tiny settings on a data subset, bench/results/smoke/")
    ap.add_argument("--name", default=NAME, help="results file stem under bench/results (e.g. squad_labels_full "
                    "for a --set retriever.train_mode=full run, so the query-side-only results stay)")
    return ap.parse_args()


# ----------------------------------------------------------------------------------------- data
def build_config(args: argparse.Namespace) -> FidKDConfig:
    """``configs/squad-fidkd.yaml`` on every training question (< ``--set``)."""
    root, out, cache = Path(args.data_root).resolve(), Path(args.out_dir).resolve(), None
    if args.smoke:
        root = make_smoke_data(Path(args.data_root), SMOKE_ROOT / "data", n_dev=20, n_train=60, n_other=40)
        out, cache = SMOKE_ROOT / "out", SMOKE_ROOT / "cache"
    flags: dict[str, Any] = {"data": {"root": str(root), "max_train_queries": None, "max_eval_queries": None},
                             "output_dir": str(out), **({"cache_dir": str(cache)} if cache else {})}
    return load_config(args.config, PINNED + (SMOKE_SETTINGS if args.smoke else []) + list(args.overrides),
                       FidKDConfig, flags=flags)


def gold_qrels(ctx: QAContext) -> dict[str, str]:
    """Training question -> its gold paragraph id (``qrels/train.tsv``: one per question)."""
    from densekd.data.beir import load_qrels

    qrels = load_qrels(Path(ctx.cfg.data.root) / "qrels" / "train.tsv", corpus=ctx.corpus, queries=ctx.queries)
    return {q: max(docs, key=docs.get) for q, docs in qrels.items() if docs}


def split_articles(ctx: QAContext, gold: dict[str, str], fraction: float, seed: int) -> tuple[list, list, list]:
    """Whole training articles (titles) drawn at random until they hold >= ``fraction`` of the questions.

    Returns ``(fit_qids, heldout_qids, heldout_titles)``, both id lists in ``ctx.train_qids`` order.
    """
    title = {q: ctx.corpus[gold[q]].title for q in ctx.train_qids}
    titles = sorted(set(title.values()))
    order = np.random.default_rng(seed).permutation(len(titles))
    held: list[str] = []
    for i in order:
        held.append(titles[i])
        if sum(title[q] in held for q in ctx.train_qids) >= fraction * len(ctx.train_qids):
            break
    keep = set(held)
    return ([q for q in ctx.train_qids if title[q] not in keep], [q for q in ctx.train_qids if title[q] in keep],
            sorted(held))


def window_corpus(corpus: Corpus, words: int) -> tuple[Corpus, dict[str, list[str]]]:
    """DPR-style blocks: each article's paragraphs (in corpus order) as one word stream cut every ``words``.

    Returns the block corpus (ids ``<title index>#<block>``, the article title kept) and, per paragraph
    id, the blocks that overlap it.
    """
    articles: dict[str, list[Passage]] = {}
    for p in corpus.values():
        articles.setdefault(p.title, []).append(p)
    blocks: Corpus = {}
    overlap: dict[str, list[str]] = {}
    for a, (title, paragraphs) in enumerate(articles.items()):
        stream = [(w, p.id) for p in paragraphs for w in p.text.split()]
        for b in range(0, len(stream), words):
            bid = f"{a}#{b // words}"
            chunk = stream[b:b + words]
            blocks[bid] = Passage(bid, " ".join(w for w, _ in chunk), title)
            for pid in dict.fromkeys(pid for _, pid in chunk):
                overlap.setdefault(pid, []).append(bid)
    return blocks, overlap


def setting(ctx: QAContext, name: str, corpus: Corpus, fit: list[str], evaluated: list[str],
            words: int) -> QAContext:
    """A context over ``corpus`` writing into ``output_dir/<name>``: BM25 fits ``fit``, ranks ``evaluated``.

    The paragraphs keep the data key (so the start model's corpus vectors cached by other runs are reused).
    """
    cfg = dataclasses.replace(ctx.cfg, output_dir=str(ctx.out / name))
    key = ctx.data_key if name == "paragraphs" else cache_key(ctx.data_key, "windows-v1", words)
    return dataclasses.replace(ctx, cfg=cfg, corpus=corpus, train_qids=fit, eval_qids=evaluated, data_key=key,
                               timings={})


# ----------------------------------------------------------------------------------------- groups
def gold_groups(ctx: QAContext, run: dict, positives: dict[str, list[str]]) -> tuple[list[TrainGroup], dict]:
    """Gold positive(s), BM25's top ``k`` others as negatives (the fidkd bench's gold row, all questions)."""
    from densekd.mining.negatives import mine_negatives_with_stats

    qrels = {q: dict.fromkeys(pids, 1) for q, pids in positives.items() if pids}
    k = ctx.cfg.retrieval.k
    groups, stats = mine_negatives_with_stats({q: s for q, s in run.items() if q in qrels}, qrels,
                                              n_negatives=k - 1, rank_range=(0, None), sampling="top")
    return groups, {**stats.as_dict(), "questions_without_gold": len(run) - len(groups)}


def oracle_groups(ctx: QAContext, run: dict, listwise: bool) -> tuple[list[TrainGroup], dict]:
    """BM25's top ``k`` scored 1 / 0 by "holds an answer string"; questions with no such passage dropped.

    ``listwise`` (the KL row): the loop's group, the first answer-holding passage then the other ``k - 1``
    in retrieval order, all scored. Otherwise (InfoNCE): every answer-holding passage a positive, the
    others negatives.
    """
    groups = []
    for qid in ctx.train_qids:
        scores = {p.id: float(has_answer(p.text, ctx.queries[qid].answers)) for p in ctx.passages(run, qid)}
        pos = [p for p, s in scores.items() if s > 0]
        if pos and listwise:
            groups.append(TrainGroup(qid, pos[:1], [p for p in scores if p != pos[0]], scores))
        elif pos:
            groups.append(TrainGroup(qid, pos, [p for p, s in scores.items() if s == 0], scores))
    n = len(ctx.train_qids)
    return groups, {"groups": len(groups), "dropped_no_answer_in_top_k": n - len(groups),
                    "mean_answer_passages": float(np.mean([len(g.pos_ids) for g in groups])) if groups else 0.0}


def row_groups(ctx: QAContext, row: str, run: dict, positives: dict[str, list[str]]) -> tuple[list, dict, dict, str]:
    """Groups, stats, loss spec and ``teacher.normalize`` of one row."""
    r = ctx.cfg.retriever
    temperature = (r.loss.get("kl") or {}).get("student_temperature", 0.05)
    nce = {"contrastive": {"weight": 1.0, "temperature": temperature}}
    if row == "gold":
        groups, stats = gold_groups(ctx, run, positives)
        return groups, stats, nce, "none"
    groups, stats = oracle_groups(ctx, run, listwise=row == "oracle_kl")
    if row == "oracle_kl":
        return groups, stats, r.loss, ctx.cfg.teacher.normalize
    return groups, stats, nce, "none"


# ----------------------------------------------------------------------------------------- evaluation
def evaluate(ctx: QAContext, runs: Path, dev: list[str], heldout: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Answer recall on dev, held-out and the fit sample; and each dev question's hit@1 (for the bootstrap)."""
    ranked = load_run(runs / "dev.trec")
    out: dict[str, Any] = {}
    for name, qids in (("dev", dev), ("heldout", heldout)):
        out[name] = answer_recall(ranked, {q: ctx.queries[q] for q in qids}, ctx.corpus, KS)
    if (runs / "train.trec").is_file():
        k = ctx.cfg.retrieval.k
        out["fit_sample"] = answer_recall(load_run(runs / "train.trec"), {q: ctx.queries[q] for q in ctx.train_qids},
                                          ctx.corpus, sorted({1, k}))
    hits = np.array([bool(ranked.get(q)) and has_answer(ctx.corpus[top_k(ranked[q], 1)[0][0]].text,
                                                         ctx.queries[q].answers) for q in dev], dtype=float)
    return out, hits


def train_row(ctx: QAContext, row: str, groups: list[TrainGroup], loss: dict, normalize: str, seed: int,
              store: Any, args: argparse.Namespace, dev: list[str], heldout: list[str]) -> dict[str, Any]:
    """Train ``row`` epoch by epoch (each a cached, resumable pipeline step), evaluating after each."""
    base = dataclasses.replace(ctx, cfg=dataclasses.replace(
        ctx.cfg, output_dir=str(ctx.out / f"{row}-seed{seed}"),
        teacher=dataclasses.replace(ctx.cfg.teacher, normalize=normalize)), timings={})
    key = cache_key("bench-squad-labels-groups-v1", row, [g.to_json() for g in groups])
    previous, epochs, best, hits = None, [], 0, {}
    for e in range(1, args.epochs + 1):
        # one epoch per step, continuing from the last; the seed changes so the order does too
        r = dataclasses.replace(ctx.cfg.retriever, loss=loss, epochs=1.0, max_steps=-1, continue_training=True,
                                seed=1000 * seed + e)
        ectx = dataclasses.replace(base, cfg=dataclasses.replace(base.cfg, retriever=r))
        start = time.perf_counter()
        previous = fidkd.train_retriever(ectx, e, groups, key, store, previous)
        runs, _ = fidkd.retrieve(ectx, e, previous, store)  # full mode: re-encodes the corpus (cached)
        metrics, hits[e] = evaluate(ectx, runs, dev, heldout)
        # the training time as measured when the step ran (a cached step costs ~0 s now)
        trained = read_marker(previous[0].parent)["summary"]
        epochs.append({"epoch": e, **metrics, "seconds": round(time.perf_counter() - start, 1),
                       "train_seconds": trained.get("train_seconds")})
        log.info("%s seed %d epoch %d: dev R@1 %.3f, held-out R@1 %.3f", row, seed, e,
                 metrics["dev"]["answer_recall@1"], metrics["heldout"]["answer_recall@1"])
        if not best or metrics["heldout"]["answer_recall@1"] > epochs[best - 1]["heldout"]["answer_recall@1"]:
            best = e
        elif e - best >= args.patience:
            break
    picked = epochs[best - 1]
    return {"seed": seed, "picked_epoch": best, "dev": picked["dev"], "heldout": picked["heldout"],
            "fit_sample": picked.get("fit_sample"), "epochs": epochs, "steps": base.timings, "_hits": hits[best]}


def summarize(seeds: list[dict[str, Any]], zeroshot_hits: np.ndarray, n: int) -> dict[str, Any]:
    """Mean ± std over seeds, and the bootstrap of each seed's and the seed-averaged R@1 vs zero-shot."""
    out: dict[str, Any] = {}
    for part in ("dev", "heldout"):
        out[part] = {m: {"mean": float(np.mean([s[part][m] for s in seeds])),
                         "std": float(np.std([s[part][m] for s in seeds]))} for m in RECALLS}
    for s in seeds:
        s["delta_r1_vs_zeroshot"] = paired_bootstrap(s["_hits"], zeroshot_hits, n)
    out["delta_r1_vs_zeroshot"] = paired_bootstrap(np.mean([s["_hits"] for s in seeds], axis=0), zeroshot_hits, n)
    d = out["delta_r1_vs_zeroshot"]
    out["clear_gain"] = bool(d["delta"] >= CLEAR_GAIN and d["ci95"][0] > 0)
    out["seeds"] = [{k: v for k, v in s.items() if k != "_hits"} for s in seeds]
    return out


# ----------------------------------------------------------------------------------------- one corpus
def run_setting(ctx: QAContext, name: str, args: argparse.Namespace, split: tuple[list, list, list],
                gold: dict[str, str]) -> dict[str, Any]:
    """BM25, zero-shot and the trained rows on one corpus (``paragraphs`` or ``windows``)."""
    from densekd.encoders.dense import resolve_model_path

    began = time.perf_counter()
    fit, heldout, _ = split
    corpus, positives = ctx.corpus, {q: [gold[q]] for q in fit}
    if name == "windows":
        corpus, overlap = window_corpus(ctx.corpus, args.window_words)
        positives = {q: [b for b in overlap.get(gold[q], []) if has_answer(corpus[b].text, ctx.queries[q].answers)]
                     for q in fit}
    dev = list(ctx.eval_qids)
    sctx = setting(ctx, name, corpus, fit, dev + heldout, args.window_words)
    bm25_runs, _ = fidkd.bm25_retrieval(sctx)
    fit_run = load_run(bm25_runs / "train.trec")
    result: dict[str, Any] = {"passages": len(corpus), "bm25": evaluate(sctx, bm25_runs, dev, heldout)[0]}
    # the evaluation context: BM25's candidates came from `fit`; dense runs rank a fit sample, dev, held-out
    ectx = dataclasses.replace(sctx, train_qids=sample_ids(fit, args.train_sample, ctx.cfg.data.seed))
    store = base_store(ectx)
    model = Path(resolve_model_path(ctx.cfg.retriever.model))
    zctx = dataclasses.replace(ectx, cfg=dataclasses.replace(ectx.cfg, output_dir=str(sctx.out / "zeroshot")))
    runs, _ = fidkd.retrieve(zctx, 0, (model, cache_key("zeroshot", str(model))), store)
    result["zeroshot"], zeroshot_hits = evaluate(zctx, runs, dev, heldout)
    result["bm25_vs_zeroshot"] = paired_bootstrap(evaluate(sctx, bm25_runs, dev, heldout)[1], zeroshot_hits,
                                                  args.bootstrap)
    log.info("%s: BM25 dev R@1 %.3f, zero-shot %.3f", name, result["bm25"]["dev"]["answer_recall@1"],
             result["zeroshot"]["dev"]["answer_recall@1"])
    for row in args.rows:
        rctx = dataclasses.replace(ectx, train_qids=fit)  # the groups' questions
        groups, stats, loss, normalize = row_groups(rctx, row, fit_run, positives)
        seeds = [train_row(ectx, row, groups, loss, normalize, seed, store, args, dev, heldout) for seed in args.seeds]
        result[row] = {**summarize(seeds, zeroshot_hits, args.bootstrap), "groups": stats, "loss": loss,
                       "normalize": normalize}
        d = result[row]["delta_r1_vs_zeroshot"]
        log.info("%s %s: dev R@1 %.3f (%+.3f, CI %+.3f..%+.3f)", name, row, result[row]["dev"]["answer_recall@1"]["mean"],
                 d["delta"], *d["ci95"])
    result["steps"] = {**sctx.timings, **ectx.timings, **zctx.timings}
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


# ----------------------------------------------------------------------------------------- output
def fmt(stat: dict[str, float], seeds: int) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if seeds > 1 else f"{stat['mean']:.3f}"


def findings(result: dict[str, Any]) -> list[str]:
    """One line per trained row and corpus: its dev R@1 gain over zero-shot and whether it is clear."""
    lines = []
    for name, s in result["corpora"].items():
        for row in ROWS:
            if row in s:
                d = s[row]["delta_r1_vs_zeroshot"]
                lines.append(f"{name}, {LABELS[row]}: dev R@1 {s[row]['dev']['answer_recall@1']['mean']:.3f} vs "
                             f"zero-shot {s['zeroshot']['dev']['answer_recall@1']:.3f}: {d['delta']:+.3f} "
                             f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] -> "
                             f"{'clear gain' if s[row]['clear_gain'] else 'no clear gain'}")
    return lines


def markdown(result: dict[str, Any]) -> str:
    n_seeds = len(result["settings"]["seeds"])
    q = result["questions"]
    r = result["settings"]["retriever"]
    mode = "query-side-only" if r["train_mode"] == "query_only" else f"{r['train_mode']} (both towers)"
    out = [(f"squad-open, {mode} training (batch {r['batch_size']}, group {result['settings']['k']}, passage "
            f"length {r['passage_max_length']}) on {q['fit']} training questions; epoch picked on "
            f"{q['heldout']} questions of {len(q['heldout_articles'])} held-out training articles "
            f"({', '.join(q['heldout_articles'])}); dev = all {q['dev']} dev questions. "
            f"{n_seeds} seed(s){' (mean ± std)' if n_seeds > 1 else ''}; at most {result['settings']['epochs']} "
            f"epochs, patience {result['settings']['patience']}.\n")]
    for name, s in result["corpora"].items():
        header = ["system", *[f"dev R@{k}" for k in KS], "held-out R@1", "dev ΔR@1 vs zero-shot [95 % CI]",
                  "epoch picked", "fit-sample R@1"]
        rows = []
        for sys in ("bm25", "zeroshot"):
            r = s[sys]
            delta = s["bm25_vs_zeroshot"] if sys == "bm25" else None
            rows.append([LABELS[sys], *[r["dev"][m] for m in RECALLS], r["heldout"]["answer_recall@1"],
                         f"{delta['delta']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]" if delta else "",
                         "", r.get("fit_sample", {}).get("answer_recall@1", "")])
        for row in ROWS:
            if row not in s:
                continue
            r = s[row]
            d = r["delta_r1_vs_zeroshot"]
            fit_r1 = np.mean([x["fit_sample"]["answer_recall@1"] for x in r["seeds"] if x.get("fit_sample")])
            rows.append([LABELS[row], *[fmt(r["dev"][m], n_seeds) for m in RECALLS],
                         fmt(r["heldout"]["answer_recall@1"], n_seeds),
                         f"{d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                         + (" **clear gain**" if r["clear_gain"] else ""),
                         ", ".join(str(x["picked_epoch"]) for x in r["seeds"]), float(fit_r1)])
        out.append(f"## {name}: {s['passages']} passages ({s['seconds'] / 60:.1f} min)\n\n" + markdown_table(header, rows))
        per_epoch = [[LABELS[row], x["seed"], e["epoch"], e["dev"]["answer_recall@1"], e["heldout"]["answer_recall@1"],
                      e.get("fit_sample", {}).get("answer_recall@1", ""), f"{e['seconds']:.0f}",
                      f"{e['train_seconds']:.0f}" if e.get("train_seconds") is not None else ""]
                     for row in ROWS if row in s for x in s[row]["seeds"] for e in x["epochs"]]
        out.append("\nPer epoch (the pick: best held-out R@1):\n\n" + markdown_table(
            ["row", "seed", "epoch", "dev R@1", "held-out R@1", "fit-sample R@1", "seconds this run",
             "train s (when trained)"], per_epoch))
        groups = [[LABELS[row], ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in s[row]["groups"].items() if k in GROUP_STATS)]
                  for row in ROWS if row in s]
        out.append("\nTraining groups (fit questions):\n\n" + markdown_table(["row", "groups"], groups))
    out.append("\n## Finding\n\n" + "\n".join(f"- {line}" for line in findings(result)) + "\n")
    out.append("\n## Notes\n\n" + "\n".join(f"- {n}" for n in result["notes"]) + "\n")
    out.append(f"\nWall time: {result['wall_seconds'] / 60:.1f} min.\n\n![plot]({result['name']}.png)\n")
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    corpora = result["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.4), squeeze=False)
    colours = {"gold": "#4c72b0", "oracle_kl": "#dd8452", "oracle_nce": "#55a868"}
    for ax, (name, s) in zip(axes[0], corpora.items()):
        for part, ls in (("dev", "-"), ("heldout", "--")):
            ax.axhline(s["zeroshot"][part]["answer_recall@1"], color="grey", ls=ls, lw=1)
            ax.axhline(s["bm25"][part]["answer_recall@1"], color="black", ls=ls, lw=1)
            for row in ROWS:
                if row not in s:
                    continue
                n = max(len(x["epochs"]) for x in s[row]["seeds"])
                ys = [s["zeroshot"][part]["answer_recall@1"]]  # epoch 0: the start model
                ys += [np.mean([x["epochs"][e][part]["answer_recall@1"] for x in s[row]["seeds"]
                                if len(x["epochs"]) > e]) for e in range(n)]
                ax.plot(range(n + 1), ys, ls=ls, marker="o", color=colours[row],
                        label=f"{LABELS[row]} ({part})" if part == "dev" else None)
        ax.set_title(f"{name}: answer R@1, dev (solid) / held-out articles (dashed);\n"
                     "grey: zero-shot MiniLM, black: BM25", fontsize=9)
        ax.set_xlabel("epoch (0 = zero-shot; mean over seeds)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("answer recall@1")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.smoke:
        args.epochs, args.train_sample, args.bootstrap = min(args.epochs, 2), 10, 200
    cfg = build_config(args)
    began = time.perf_counter()
    ctx = load_qa_context(cfg)
    gold = gold_qrels(ctx)
    missing = [q for q in ctx.train_qids if q not in gold]
    if missing:
        raise SystemExit(f"{len(missing)} training questions have no gold paragraph in qrels/train.tsv")
    split = split_articles(ctx, gold, args.heldout_fraction, cfg.data.seed)
    corpora = ["paragraphs", "windows"] if "auto" in args.corpora else args.corpora
    results: dict[str, Any] = {}
    for name in corpora:
        if name == "windows" and "auto" in args.corpora and "paragraphs" in results and any(
                results["paragraphs"][r]["clear_gain"] for r in args.rows if r.startswith("oracle")):
            log.info("paragraphs: an oracle row gains clearly; windows not needed")
            continue
        results[name] = run_setting(ctx, name, args, split, gold)
    result = {
        "name": args.name,
        "corpora": results,
        "questions": {"fit": len(split[0]), "heldout": len(split[1]), "heldout_articles": split[2],
                      "dev": len(ctx.eval_qids)},
        "settings": {"seeds": args.seeds, "epochs": args.epochs, "patience": args.patience, "rows": args.rows,
                     "k": cfg.retrieval.k, "window_words": args.window_words, "heldout_fraction": args.heldout_fraction,
                     "retriever": dataclasses.asdict(cfg.retriever), "teacher": dataclasses.asdict(cfg.teacher),
                     "overrides": (SMOKE_SETTINGS if args.smoke else []) + args.overrides,
                     "output_dir": cfg.output_dir, "smoke": args.smoke},
        "notes": [
            ("query-side-only: the passage tower and the corpus vectors stay all-MiniLM-L6-v2's"
             if cfg.retriever.train_mode == "query_only" else
             "full: both towers train; the corpus is re-encoded after every epoch (zero-shot and BM25 unchanged)"),
            ("each epoch is one pipeline step continuing from the last (lr warm-up and linear decay to 0 "
             "within every epoch); the epoch with the best held-out R@1 is picked, dev is reported there"),
            (f"ΔR@1: paired bootstrap over dev questions ({args.bootstrap} resamples), of the seed-averaged hit; "
             f"clear gain = ΔR@1 >= {CLEAR_GAIN} with the 95 % interval above 0"),
            "fit-sample R@1: the picked epoch on a seeded sample of the training questions it was fitted to",
            "answer R@k: the top k holds an answer string (DPR's has_answer on the passage text, not its title)"],
        "wall_seconds": round(time.perf_counter() - began, 1),
        "provenance": provenance(),
    }
    results_dir = RESULTS / "smoke" if args.smoke else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    plot(result, results_dir / f"{args.name}.png")
    path = write_results(args.name, result, markdown(result), results_dir)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
