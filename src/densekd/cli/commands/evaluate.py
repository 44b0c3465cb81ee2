"""``densekd evaluate``: score a TREC run against qrels (and, for QA sets, answer recall@k).

Inputs and outputs (data contract)
----------------------------------
* ``--run``: TREC run file (``qid Q0 pid rank score tag``, :mod:`densekd.data.trec`).
* ``--qrels``: BEIR qrels tsv (``query-id  corpus-id  score``, header optional).
* ``--queries`` + ``--corpus`` (both or neither): BEIR files of a QA set; adds
  ``answer_recall@k`` (DPR top-k accuracy, :func:`densekd.eval.qa.answer_recall`) over the queries
  judged in ``--qrels`` that have answers.
* Prints a two-column table on stdout; ``--out`` also writes ``{"metric": value, ...}`` as JSON.
* Means are over every judged query of the qrels; queries the run lacks count as 0
  (:mod:`densekd.eval.metrics`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from densekd.cli.config import add_config_arguments, config_from_args
from densekd.data.io import DataFormatError
from densekd.eval.metrics import DEFAULT_METRICS, VALID_METRICS


@dataclass
class EvaluateConfig:
    """Settings of ``densekd evaluate`` (YAML keys = field names)."""

    run: str = field(metadata={"help": "TREC run file", "metavar": "RUN.trec"})
    qrels: str = field(metadata={"help": "BEIR qrels tsv (query-id, corpus-id, score)", "metavar": "FILE"})
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), metadata={
        "help": "metrics to compute: " + ", ".join(VALID_METRICS), "metavar": "NAME"})
    queries: str | None = field(default=None, metadata={
        "help": "QA queries.jsonl with answers (with --corpus: adds answer_recall@k)", "metavar": "FILE"})
    corpus: str | None = field(default=None, metadata={
        "help": "corpus.jsonl whose passage texts are searched for answers", "metavar": "FILE"})
    ks: list[int] = field(default_factory=lambda: [1, 5, 20, 100], metadata={
        "help": "cutoffs for answer_recall@k", "metavar": "K"})
    out: str | None = field(default=None, metadata={"help": "also write the results as JSON", "metavar": "FILE"})

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")


DESCRIPTION = """\
Score a TREC run file against relevance judgements and print a table of metrics.

Means are taken over every query of the qrels that has a relevant document (score > 0); a judged
query missing from the run counts as 0 (BEIR's evaluation skips it instead). For QA sets, give
--queries and --corpus to add DPR-style answer recall@k (an answer string occurs in a top-k passage).
"""

EPILOG = """\
examples:
  densekd evaluate --run dev.trec --qrels data/scifact/qrels/dev.tsv
  densekd evaluate --run dev.trec --qrels data/scifact/qrels/dev.tsv --metrics ndcg@10 recall@1000 --out dev.json
  densekd evaluate --run squad.trec --qrels data/squad-open/qrels/dev.tsv \\
                   --queries data/squad-open/queries.jsonl --corpus data/squad-open/corpus.jsonl --ks 1 5 20
  densekd evaluate --config eval.yaml --set metrics=[ndcg@10,map]

a config file (eval.yaml) uses the option names with underscores as keys:
  run: runs/dev.trec
  qrels: data/scifact/qrels/dev.tsv
  metrics: [ndcg@10, recall@100]
  out: runs/dev.json
"""


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd evaluate``."""
    parser = subparsers.add_parser("evaluate", help="compute nDCG / MRR / recall / MAP of a run (and answer recall)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, EvaluateConfig)
    return parser


def _check(cfg: EvaluateConfig, source: str | None) -> None:
    from densekd.eval.metrics import check_metrics

    if not cfg.metrics:
        raise DataFormatError(source, "key 'metrics' is empty: name at least one metric "
                                      f"({', '.join(VALID_METRICS)})")
    try:
        check_metrics(cfg.metrics)
    except ValueError as e:
        raise DataFormatError(source, f"key 'metrics': {e}") from None
    if (cfg.queries is None) != (cfg.corpus is None):
        raise DataFormatError(source, "answer recall needs both --queries and --corpus")


def _answer_recall(cfg: EvaluateConfig, run: dict, judged: list[str]) -> dict[str, float]:
    from densekd.data.beir import load_corpus, load_queries
    from densekd.eval.qa import answer_recall

    # queries.jsonl holds every split: keep the judged ones, so both tables average over one query set.
    all_queries = load_queries(cfg.queries)
    queries = {qid: all_queries[qid] for qid in judged if qid in all_queries}
    if not any(q.answers for q in queries.values()):
        raise DataFormatError(cfg.queries, f"no query judged in {cfg.qrels} has 'answers': "
                                           "answer recall needs a QA set")
    corpus = load_corpus(cfg.corpus, allow_empty=True)  # an empty passage simply holds no answer
    try:
        return answer_recall(run, queries, corpus, ks=cfg.ks)
    except ValueError as e:  # the run ranks a passage that is not in --corpus
        raise DataFormatError(cfg.run, f"{e} ({cfg.corpus})") from None


def format_table(results: dict[str, float], note: str = "") -> str:
    """A two-column text table of ``results`` (values with 4 decimals)."""
    width = max(len("metric"), *(len(k) for k in results))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in results.items()]
    return "\n".join(lines + ([note] if note else []))


def main(args: argparse.Namespace) -> int:
    """Run ``densekd evaluate``."""
    cfg = config_from_args(args, EvaluateConfig)
    _check(cfg, getattr(args, "config", None))
    if cfg.out is not None:
        from densekd.cli.outputs import check_output

        check_output("--out", cfg.out, {"--run": cfg.run, "--qrels": cfg.qrels, "--queries": cfg.queries,
                                        "--corpus": cfg.corpus})
    from densekd.data.beir import load_qrels
    from densekd.data.io import write_json
    from densekd.data.trec import load_run
    from densekd.eval.metrics import evaluate, judged_queries

    run, qrels = load_run(cfg.run), load_qrels(cfg.qrels)
    if not run:
        raise DataFormatError(cfg.run, "no ranked documents in this run file: nothing to evaluate")
    judged = judged_queries(qrels)
    if not judged:
        raise DataFormatError(cfg.qrels, "no query has a relevant document (score > 0)")
    results = evaluate(run, qrels, cfg.metrics)
    if cfg.queries is not None:
        results.update(_answer_recall(cfg, run, judged))
    missing = sum(1 for qid in judged if not run.get(qid))
    note = f"\n{len(judged)} judged queries" + (f", {missing} missing from the run (scored 0)" if missing else "")
    if missing == len(judged):  # almost always ids that differ between the files, not a useless retriever
        note += (f"\nwarning: no judged query of {cfg.qrels} is in {cfg.run}: do the query ids match "
                 f"(e.g. {judged[0]!r} vs {next(iter(run))!r})?")
    print(format_table(results, note))
    if cfg.out:
        write_json(cfg.out, results)
    return 0
