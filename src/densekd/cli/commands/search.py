"""``densekd search``: retrieve the top-k passages of every query from an index; write a TREC run.

Inputs and outputs (data contract)
----------------------------------
* ``--index``: a folder written by ``densekd index`` (its ``densekd_index.json`` gives the kind and,
  for dense indexes, the encoder), or a bare :class:`~densekd.index.bm25.BM25Index` /
  :class:`~densekd.index.faiss_index.FaissIndex` folder (a bare FAISS folder needs ``--model``).
* ``--queries``: a BEIR ``queries.jsonl``. ``--split NAME`` keeps the queries judged in
  ``<queries folder>/qrels/NAME.tsv``; ``--qrels FILE`` does the same with any qrels file.
* ``--out``: a TREC run file (``qid Q0 pid rank score tag``), see :mod:`densekd.data.trec`.
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


def _search_dense(cfg: SearchConfig, info: dict[str, Any], queries: Any) -> Any:
    from densekd.encoders.dense import DenseEncoder
    from densekd.index.faiss_index import FaissIndex

    model = cfg.model or info.get("model")
    if model is None:
        raise DataFormatError(info["path"], "a bare FAISS index does not name its encoder: give --model")
    if not Path(model).is_dir() and not cfg.model:
        raise DataFormatError(Path(cfg.index) / MANIFEST, f"the index's model folder is gone: {model} (give --model)")
    index = FaissIndex.load(info["path"])
    encoder = DenseEncoder.from_pretrained(model, query_max_length=cfg.max_length)
    qids = list(queries)
    vectors = encoder.encode_queries([queries[q].text for q in qids], batch_size=cfg.batch_size)
    return index.search(vectors, qids, k=cfg.k)


def main(args: argparse.Namespace) -> int:
    """Run ``densekd search``."""
    cfg = config_from_args(args, SearchConfig)
    from densekd.cli.outputs import check_model_folder, check_output
    from densekd.data.trec import write_run

    info = read_index_info(Path(cfg.index))  # first: "not an index" says more than any --out problem
    check_output("--out", cfg.out, {"--queries": cfg.queries, "--qrels": cfg.qrels, "--index": cfg.index,
                                    "--model": cfg.model})
    check_model_folder("--model", cfg.model)
    queries = _select_queries(cfg)
    if info["kind"] == "bm25":
        from densekd.index.bm25 import BM25Index

        run = BM25Index.load(info["path"]).search(queries, k=cfg.k)
    else:
        run = _search_dense(cfg, info, queries)
    write_run(cfg.out, run)
    print(f"densekd search: {len(run)} queries, top {cfg.k} -> {cfg.out}", file=sys.stderr)
    return 0
