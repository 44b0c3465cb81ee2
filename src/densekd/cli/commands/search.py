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
* Re-ranking cascade (ERNIE-Search's inference path, :mod:`densekd.teachers.cascade`): ``--colbert
  MODEL`` re-ranks each query's top ``--colbert-depth`` by exact MaxSim over the model's corpus token
  vectors (``--token-store DIR``: encoded from the index's corpus on first use, reused after; a
  folder holding another model's or corpus's tokens is refused, never overwritten), then
  ``--cross-encoder MODEL`` re-ranks the top ``--cross-encoder-depth``. Below each stage's depth the
  previous stage's order is kept (rank-valued scores). With ``--latency`` every stage is timed per
  query, and the JSON gains ``"stages": {name: {"p50", "p95", "mean", "max", "n"}}``.
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
    max_length: int | None = field(default=None, metadata={
        "help": "dense only: query length limit in tokens (default: the model's own, as trained; 64 for a "
                "plain checkpoint)"})
    backend: str | None = field(default=None, metadata={
        "help": "dense only: query encoder backend (torch, onnx, onnx-int8); default: the "
                "backend the index was built with"})
    latency: bool = field(default=False, metadata={
        "help": "search queries one at a time (batch 1) and report per-query latency p50/p95 on stderr"})
    latency_out: str | None = field(default=None, metadata={
        "help": "with --latency: also write the latency summary as JSON to this file", "metavar": "FILE"})
    colbert: str | None = field(default=None, metadata={
        "help": "re-rank with this late-interaction model folder (densekd ColBERT or shared-tower ERNIE-Search): "
                "exact MaxSim over its stored corpus tokens", "metavar": "PATH"})
    colbert_depth: int = field(default=100, metadata={"help": "with --colbert: candidates re-ranked per query"})
    token_store: str | None = field(default=None, metadata={
        "help": "with --colbert: folder of the model's corpus token vectors (built from the index's corpus "
                "on first use, reused after)", "metavar": "DIR"})
    cross_encoder: str | None = field(default=None, metadata={
        "help": "last stage: re-rank with this cross-encoder folder", "metavar": "PATH"})
    cross_encoder_depth: int = field(default=20, metadata={
        "help": "with --cross-encoder: candidates re-ranked per query"})

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
  densekd search --index idx/ernie --queries q.jsonl --out c.trec --colbert runs/ernie/model \
                 --token-store idx/ernie-tokens --cross-encoder runs/ce --cross-encoder-depth 20 --latency
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
    length = {} if cfg.max_length is None else {"query_max_length": cfg.max_length}  # default: the model's own
    return load_encoder(model, backend, **length)


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


def _late_interaction(path: str) -> Any:
    """A late-interaction encoder from a densekd ColBERT folder or a shared-tower ERNIE-Search folder."""
    from densekd.encoders.late_interaction import LI_CONFIG_NAME, LateInteractionEncoder

    root = Path(path)
    if not (root / LI_CONFIG_NAME).is_file():
        raise DataFormatError(root, f"--colbert: not a late-interaction model folder (no {LI_CONFIG_NAME})")
    if (root / "query").is_dir() or (root / "passage").is_dir():
        raise DataFormatError(root, "--colbert: this ERNIE-Search model has separate query/passage towers (trained "
                                    "query_only); the cascade needs one tower that encodes the corpus tokens")
    return LateInteractionEncoder.from_pretrained(root)


def _token_store(encoder: Any, corpus: Any, folder: Path) -> Any:
    """The encoder's corpus token store in ``folder``: reused when it holds exactly these tokens, built when
    the folder is new (or a half-built store), refused when it holds anything else."""
    from densekd.index.chunks import corpus_digest
    from densekd.index.late_interaction import MANIFEST as TOKENS_MANIFEST
    from densekd.index.late_interaction import STATE, TokenEmbeddingStore, encode_corpus_tokens
    from densekd.teachers.late_interaction import LateInteractionTeacher

    fingerprint = LateInteractionTeacher(encoder).fingerprint
    if (folder / TOKENS_MANIFEST).is_file():
        store = TokenEmbeddingStore.load(folder)
        same = (store.manifest.get("fingerprint") == fingerprint
                and store.manifest.get("corpus_digest") == corpus_digest(list(corpus.values())))
        if not same:
            raise DataFormatError(folder, "--token-store holds the tokens of another model or corpus; "
                                          "choose another folder (it is left as it is)")
        return store
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / STATE).is_file())):
        raise DataFormatError(folder, "--token-store is not a token store folder; choose a new or empty folder")
    return encode_corpus_tokens(encoder, corpus, folder, fingerprint=fingerprint)


def _cascade_stages(cfg: SearchConfig, info: dict[str, Any]) -> list[Any]:
    """The re-ranking stages after the index search (``--colbert``, ``--cross-encoder``), checked first."""
    if not (cfg.colbert or cfg.cross_encoder):
        return []
    from densekd.data.beir import load_corpus
    from densekd.teachers.cascade import colbert_stage, teacher_stage
    from densekd.teachers.cross_encoder import CrossEncoderTeacher

    if cfg.colbert and not cfg.token_store:
        raise DataFormatError(None, "--colbert needs --token-store DIR (where the corpus token vectors are kept)")
    last = cfg.k
    for flag, depth, on in (("--colbert-depth", cfg.colbert_depth, cfg.colbert),
                            ("--cross-encoder-depth", cfg.cross_encoder_depth, cfg.cross_encoder)):
        if on and depth > last:
            raise DataFormatError(None, f"{flag} {depth} exceeds the {last} candidates of the stage before it")
        last = depth if on else last
    if not info.get("corpus"):
        raise DataFormatError(info["path"], "re-ranking needs the corpus texts: use an index folder written by "
                                            "`densekd index` (its manifest names the corpus)")
    corpus = load_corpus(info["corpus"])
    stages = []
    if cfg.colbert:
        encoder = _late_interaction(cfg.colbert)
        stages.append(colbert_stage(encoder, _token_store(encoder, corpus, Path(cfg.token_store)), cfg.colbert_depth))
    if cfg.cross_encoder:
        stages.append(teacher_stage(CrossEncoderTeacher.from_pretrained(cfg.cross_encoder), corpus,
                                    cfg.cross_encoder_depth))
    return stages


def _run_cascade(cfg: SearchConfig, queries: Any, search_all: Any, search_one: Any, stages: list[Any],
                 first_name: str) -> tuple[Any, dict[str, Any] | None]:
    """Index search + re-ranking stages; per-stage latency summaries with ``--latency``."""
    from densekd.data.types import Query
    from densekd.index.latency import latency_summary
    from densekd.teachers.cascade import cascade_search

    texts = {qid: q.text for qid, q in queries.items()}
    if not cfg.latency:
        run, _ = cascade_search(texts, lambda qs: search_all({q: Query(q, t) for q, t in qs.items()}), stages,
                                first_name)
        return run, None
    run, seconds = cascade_search(texts, lambda qs: {q: search_one(q, t) for q, t in qs.items()}, stages,
                                  first_name, per_query=True, warmup=5)
    total = [sum(parts) for parts in zip(*seconds.values())]
    return run, {**latency_summary(total), "stages": {name: latency_summary(v) for name, v in seconds.items()}}


def main(args: argparse.Namespace) -> int:
    """Run ``densekd search``."""
    cfg = config_from_args(args, SearchConfig)
    from densekd.cli.outputs import check_model_folder, check_output
    from densekd.data.io import write_json
    from densekd.data.trec import write_run

    info = read_index_info(Path(cfg.index))  # first: "not an index" says more than any --out problem
    inputs = {"--queries": cfg.queries, "--qrels": cfg.qrels, "--index": cfg.index, "--model": cfg.model,
              "--colbert": cfg.colbert, "--cross-encoder": cfg.cross_encoder}
    check_output("--out", cfg.out, inputs)
    if cfg.latency_out:
        check_output("--latency-out", cfg.latency_out, {**inputs, "--out": cfg.out})
    for flag, model in (("--model", cfg.model), ("--colbert", cfg.colbert), ("--cross-encoder", cfg.cross_encoder)):
        check_model_folder(flag, model)
    queries = _select_queries(cfg)
    backend = cfg.backend or info.get("backend", "torch")
    # the searcher first: it checks the backend and loads the query encoder in seconds, while the
    # cascade's stages may encode the whole corpus into --token-store
    search_all, search_one = _searcher(cfg, info, backend)
    stages = _cascade_stages(cfg, info)
    what = "BM25" if info["kind"] == "bm25" else f"encode ({backend}) + FAISS"
    if stages:
        run, lat = _run_cascade(cfg, queries, search_all, search_one, stages, info["kind"])
        if lat is not None:
            parts = ", ".join(f"{name} {v['p50']:.2f}" for name, v in lat["stages"].items())
            print(f"densekd search: latency per query (batch 1, {what} -> {' -> '.join(s.name for s in stages)}): "
                  f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms over {lat['n']} queries; per stage p50 (ms): "
                  f"{parts}", file=sys.stderr)
            if cfg.latency_out:
                write_json(cfg.latency_out, {"kind": info["kind"],
                                             "backend": backend if info["kind"] == "dense" else None, **lat})
    elif not cfg.latency:
        run = search_all(queries)
    else:
        from densekd.index.latency import timed_search

        run, lat = timed_search(search_one, {qid: q.text for qid, q in queries.items()})
        print(f"densekd search: latency per query (batch 1, {what}): p50 {lat['p50']:.2f} ms, "
              f"p95 {lat['p95']:.2f} ms over {lat['n']} queries", file=sys.stderr)
        if cfg.latency_out:
            write_json(cfg.latency_out, {"kind": info["kind"], "backend": backend if info["kind"] == "dense" else None,
                                         **lat})
    write_run(cfg.out, run)
    print(f"densekd search: {len(run)} queries, top {cfg.k} -> {cfg.out}", file=sys.stderr)
    return 0
