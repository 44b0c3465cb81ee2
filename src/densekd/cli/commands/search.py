"""``densekd search``: retrieve the top-k passages of every query from an index; write a TREC run.

Inputs and outputs (data contract)
----------------------------------
* ``--index``: a folder written by ``densekd index`` (its ``densekd_index.json`` gives the kind and,
  for dense indexes, the encoder), or a bare :class:`~densekd.index.bm25.BM25Index` /
  :class:`~densekd.index.faiss_index.FaissIndex` folder (a bare FAISS folder needs ``--model``).
* ``--queries``: a BEIR ``queries.jsonl``. ``--split NAME`` keeps the queries judged in
  ``<queries folder>/qrels/NAME.tsv``; ``--qrels FILE`` does the same with any qrels file.
* ``--out``: a TREC run file (``qid Q0 pid rank score tag``), see :mod:`densekd.data.trec`.
* ``--latency``: queries are searched one at a time (batch 1) and the per-query time (dense: query
  encoding + FAISS; BM25: tokenising + scoring) is reported as p50/p95 in milliseconds on stderr
  and, with ``--latency-out FILE``, as JSON ``{"kind", "backend", "n", "p50", "p95", "mean", "max"}``.
  The run is the same as without it (apart from float rounding of batched vs. single encoding).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekd.cli.commands.index import MANIFEST
from densekd.cli.config import add_config_arguments, config_from_args
from densekd.data.io import DataFormatError


@dataclass
class SearchConfig:
    """Settings of ``densekd search`` (YAML keys = field names)."""

    index: str = field(metadata={"help": "index folder from `densekd index`", "metavar": "DIR"})
    queries: str = field(metadata={"help": "BEIR queries.jsonl", "metavar": "FILE"})
    out: str = field(metadata={"help": "TREC run file to write", "metavar": "RUN.trec"})
    split: str | None = field(default=None, metadata={
        "help": "only queries judged in <queries folder>/qrels/SPLIT.tsv (e.g. dev, test)"})
    qrels: str | None = field(default=None, metadata={
        "help": "only queries judged in this qrels file (instead of --split)", "metavar": "FILE"})
    k: int = field(default=100, metadata={"help": "passages retrieved per query", "flags": ("-k", "--k")})
    model: str | None = field(default=None, metadata={
        "help": "dense only: query encoder; default: the model the index was built with", "metavar": "PATH"})
    batch_size: int = field(default=128, metadata={"help": "dense only: queries per encoder batch"})
    max_length: int = field(default=64, metadata={"help": "dense only: query length limit in tokens"})
    backend: str | None = field(default=None, metadata={
        "help": "dense only: query encoder backend (torch, onnx, onnx-int8); default: the "
                "backend the index was built with"})
    latency: bool = field(default=False, metadata={
        "help": "search queries one at a time (batch 1) and report per-query latency p50/p95 on stderr"})
    latency_out: str | None = field(default=None, metadata={
        "help": "with --latency: also write the latency summary as JSON to this file", "metavar": "FILE"})

    def __post_init__(self) -> None:
        from densekd.pipeline.validate import check_numbers

        check_numbers(self)  # k, batch_size, max_length >= 1, naming the key


DESCRIPTION = """\
Retrieve the top-k passages for each query from an index built by `densekd index`, and write them
as a TREC run file (qid Q0 pid rank score tag). The index kind (bm25 or dense) and, for dense
indexes, the encoder are read from the index folder; --model overrides the encoder.
"""

EPILOG = """\
examples:
  densekd search --index idx/scifact-bm25 --queries data/scifact/queries.jsonl --split dev --out dev.trec
  densekd search --index idx/scifact-minilm --queries data/scifact/queries.jsonl \\
                 --qrels data/scifact/qrels/dev.tsv -k 1000 --out dev-dense.trec
  densekd search --config search.yaml --set k=20
"""


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd search``."""
    parser = subparsers.add_parser("search", help="retrieve top-k passages per query into a TREC run",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, SearchConfig)
    return parser


def read_index_info(root: Path) -> dict[str, Any]:
    """``{"kind", "path", "model"?}`` for an index folder (with a manifest, or a bare index folder)."""
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(manifest, f"unreadable index manifest ({e})") from None
        if not isinstance(info, dict):
            raise DataFormatError(manifest, f"corrupt index manifest: expected a JSON object, got {type(info).__name__}")
        if info.get("kind") not in ("bm25", "dense"):
            raise DataFormatError(manifest, f"unknown index kind {info.get('kind')!r}")
        if info["kind"] == "dense" and not isinstance(info.get("model"), (str, type(None))):
            raise DataFormatError(manifest, f"corrupt index manifest: 'model' must be a path, got {info['model']!r}")
        return {**info, "path": root / ("bm25" if info["kind"] == "bm25" else "faiss")}
    if (root / "index.faiss").is_file():
        return {"kind": "dense", "path": root}
    if (root / "params.index.json").is_file():
        return {"kind": "bm25", "path": root}
    what = "folder not found" if not root.exists() else f"not an index folder (no {MANIFEST})"
    raise DataFormatError(root, f"{what}; build one with `densekd index`")


def _split_qrels(cfg: SearchConfig) -> Path:
    folder = Path(cfg.queries).parent / "qrels"
    path = folder / f"{cfg.split}.tsv"
    if not path.is_file():  # the usual slip is "test" on a set that ships "dev": name what exists
        found = ", ".join(sorted(p.stem for p in folder.glob("*.tsv"))) or "none"
        raise DataFormatError(path, f"no qrels for split {cfg.split!r} (available: {found})")
    return path


def _select_queries(cfg: SearchConfig) -> Any:
    from densekd.data.beir import load_qrels, load_queries

    queries = load_queries(cfg.queries)
    if not queries:
        raise DataFormatError(cfg.queries, "no queries in this file: nothing to search")
    if cfg.split and cfg.qrels:
        raise DataFormatError(None, "give --split or --qrels, not both")
    qrels_path = _split_qrels(cfg) if cfg.split else cfg.qrels
    if qrels_path is None:
        return queries
    qrels = load_qrels(qrels_path)
    selected = {qid: q for qid, q in queries.items() if qid in qrels}
    if not selected:
        raise DataFormatError(qrels_path, f"no query of {cfg.queries} is judged in this file")
    return selected


def _query_encoder(cfg: SearchConfig, info: dict[str, Any], backend: str) -> Any:
    from densekd.encoders.onnx_backend import BACKENDS, load_encoder

    model = cfg.model or info.get("model")
    if model is None:
        raise DataFormatError(info["path"], "a bare FAISS index does not name its encoder: give --model")
    if not Path(model).is_dir() and not cfg.model:
        raise DataFormatError(Path(cfg.index) / MANIFEST, f"the index's model folder is gone: {model} (give --model)")
    if backend not in BACKENDS:
        raise DataFormatError(None, f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return load_encoder(model, backend, query_max_length=cfg.max_length)


def _searcher(cfg: SearchConfig, info: dict[str, Any], backend: str) -> tuple[Any, Any]:
    """``(search_all(queries) -> Run, search_one(qid, text) -> {pid: score})`` for the index kind."""
    if info["kind"] == "bm25":
        from densekd.index.bm25 import BM25Index

        bm25 = BM25Index.load(info["path"])
        return (lambda qs: bm25.search(qs, k=cfg.k),
                lambda qid, text: bm25.search({qid: text}, k=cfg.k, show_progress=False).get(qid, {}))
    from densekd.index.faiss_index import FaissIndex

    index = FaissIndex.load(info["path"])
    encoder = _query_encoder(cfg, info, backend)

    def search_all(qs: Any) -> Any:
        qids = list(qs)
        vectors = encoder.encode_queries([qs[q].text for q in qids], batch_size=cfg.batch_size)
        return index.search(vectors, qids, k=cfg.k)

    def search_one(qid: str, text: str) -> dict[str, float]:
        return index.search(encoder.encode_queries([text], batch_size=1), [qid], k=cfg.k)[qid]

    return search_all, search_one


def main(args: argparse.Namespace) -> int:
    """Run ``densekd search``."""
    cfg = config_from_args(args, SearchConfig)
    from densekd.cli.outputs import check_model_folder, check_output
    from densekd.data.io import write_json
    from densekd.data.trec import write_run

    info = read_index_info(Path(cfg.index))  # first: "not an index" says more than any --out problem
    check_output("--out", cfg.out, {"--queries": cfg.queries, "--qrels": cfg.qrels, "--index": cfg.index,
                                    "--model": cfg.model})
    check_model_folder("--model", cfg.model)
    queries = _select_queries(cfg)
    backend = cfg.backend or info.get("backend", "torch")
    search_all, search_one = _searcher(cfg, info, backend)
    if not cfg.latency:
        run = search_all(queries)
    else:
        from densekd.index.latency import timed_search

        run, lat = timed_search(search_one, {qid: q.text for qid, q in queries.items()})
        what = "BM25" if info["kind"] == "bm25" else f"encode ({backend}) + FAISS"
        print(f"densekd search: latency per query (batch 1, {what}): p50 {lat['p50']:.2f} ms, "
              f"p95 {lat['p95']:.2f} ms over {lat['n']} queries", file=sys.stderr)
        if cfg.latency_out:
            write_json(cfg.latency_out, {"kind": info["kind"], "backend": backend if info["kind"] == "dense" else None,
                                         **lat})
    write_run(cfg.out, run)
    print(f"densekd search: {len(run)} queries, top {cfg.k} -> {cfg.out}", file=sys.stderr)
    return 0
