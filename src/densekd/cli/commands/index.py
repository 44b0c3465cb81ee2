"""``densekd index``: build a BM25 or a dense (FAISS) index over a BEIR ``corpus.jsonl``.

Output folder (data contract, read by ``densekd search``)
---------------------------------------------------------
* ``densekd_index.json``: ``{"kind": "bm25"|"dense", "corpus": str, "passages": int}`` plus, for
  dense, ``"model"`` (resolved checkpoint path), ``"max_length"``, ``"factory"`` and ``"backend"``. Written last,
  so its presence means the index is complete; ``search`` takes the kind and the model from it.
* ``bm25/``: a :class:`~densekd.index.bm25.BM25Index` folder (kind ``bm25``);
* ``faiss/``: a :class:`~densekd.index.faiss_index.FaissIndex` folder and ``embeddings/``: the
  passage embeddings of :func:`~densekd.index.encode.encode_corpus` (kind ``dense``). Embeddings are
  kept so that an interrupted run resumes and another FAISS factory can be built without re-encoding.

Sharded encoding (dense): ``--num-shards N --shard-index K`` in N separate processes, or N ranks of
``torchrun`` (defaults from ``WORLD_SIZE`` / ``RANK``), all with the same ``--out``. Each encodes its
share of ``embeddings/``; the process that completes the folder (rank 0 under torchrun) builds
``faiss/`` and writes ``densekd_index.json``, the others exit 0 after their share.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from densekd.cli.config import add_config_arguments, config_from_args, settings_help

MANIFEST = "densekd_index.json"


@dataclass
class BM25Settings:
    """BM25 parameters (``bm25.*`` keys; see :class:`densekd.index.bm25.BM25Index`)."""

    k1: float = field(default=1.5, metadata={"help": "term-frequency saturation"})
    b: float = field(default=0.75, metadata={"help": "document-length normalisation"})
    method: str = field(default="lucene", metadata={"help": "bm25s variant: lucene, robertson, atire, bm25l, bm25+"})
    stemmer: str | None = field(default="english", metadata={"help": "PyStemmer language, null for none"})
    stopwords: str | None = field(default="en", metadata={"help": "stop-word list name, null for none"})


@dataclass
class IndexConfig:
    """Settings of ``densekd index`` (YAML keys = field names)."""

    corpus: str = field(metadata={"help": "BEIR corpus.jsonl to index", "metavar": "FILE"})
    out: str = field(metadata={"help": "output folder (created; an index already there is replaced)", "metavar": "DIR"})
    kind: Literal["bm25", "dense"] = field(default="bm25", metadata={"help": "lexical BM25 or dense embeddings"})
    model: str | None = field(default=None, metadata={
        "help": "dense only: encoder checkpoint (HF, sentence-transformers or densekd folder); "
                "default: bundled all-MiniLM-L6-v2", "metavar": "PATH"})
    factory: str = field(default="Flat", metadata={
        "help": "dense only: FAISS index_factory string, e.g. Flat, HNSW32, IVF1024,PQ64"})
    batch_size: int = field(default=64, metadata={"help": "dense only: passages per encoder batch"})
    max_length: int = field(default=256, metadata={"help": "dense only: passage length limit in tokens"})
    chunk_size: int = field(default=4096, metadata={
        "help": "dense only: passages per embeddings file (what a resume redoes at most; the unit of sharding)"})
    num_shards: int | None = field(default=None, metadata={
        "help": "dense only: split the encoding across N processes started with the same --out, each "
                "with its own --shard-index; default: torchrun's WORLD_SIZE, else 1", "metavar": "N"})
    shard_index: int | None = field(default=None, metadata={
        "help": "dense only: this process's shard, 0..N-1; default: torchrun's RANK, else 0", "metavar": "K"})
    backend: str = field(default="torch", metadata={
        "help": "dense only: inference backend: torch (PyTorch fp32), onnx (ONNX Runtime fp32, same vectors), "
                "onnx-int8 (dynamic int8: fastest, vectors drift slightly); ONNX exports are cached beside "
                "the model (needs onnxruntime)"})
    allow_empty: bool = field(default=False, metadata={
        "help": "accept passages with empty text (Cranfield has two)"})
    bm25: BM25Settings = field(default_factory=BM25Settings)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 1 or self.chunk_size < 1:
            raise ValueError("batch_size, max_length and chunk_size must be positive")
        from densekd.encoders.onnx_backend import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if (self.num_shards is None) != (self.shard_index is None):
            raise ValueError("give both num_shards and shard_index, or neither (torchrun sets them)")
        if self.num_shards is not None and self.shard_index is not None:
            if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
                raise ValueError(f"shard_index must be in [0, num_shards), got {self.shard_index} of {self.num_shards}")
            if self.kind == "bm25" and self.num_shards > 1:
                raise ValueError("num_shards applies to kind dense only (BM25 indexing is not sharded)")


DESCRIPTION = """\
Build a search index over a BEIR corpus.jsonl ({"_id", "title", "text"} per line).

  bm25   lexical BM25 (bm25s, English stemming and stop words): no model, seconds on CPU.
  dense  encode every passage (title + text) with a dense encoder, then build a FAISS index.
         Embeddings are cached in OUT/embeddings, so an interrupted run resumes where it stopped.
         Encoding can be split across processes (--num-shards/--shard-index, or torchrun); the
         process that finishes the embeddings builds the index, the others just exit.
"""

EPILOG = """\
examples:
  densekd index --corpus data/scifact/corpus.jsonl --out idx/scifact-bm25
  densekd index --corpus data/scifact/corpus.jsonl --out idx/scifact-minilm --kind dense
  densekd index --corpus data/scifact/corpus.jsonl --out idx/s --kind dense --model runs/student/final \\
                --factory HNSW32 --batch-size 128
  densekd index --corpus data/scifact/corpus.jsonl --out idx/s8 --kind dense --backend onnx-int8
  densekd index --config index.yaml --set bm25.k1=0.9
  # sharded dense encoding: 2 processes (or: torchrun --nproc_per_node 2 -m densekd.cli.main index ...)
  densekd index --corpus c.jsonl --out idx/s --kind dense --num-shards 2 --shard-index 0 &
  densekd index --corpus c.jsonl --out idx/s --kind dense --num-shards 2 --shard-index 1

settings available only in the config file or with --set:
""" + settings_help(IndexConfig)


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd index``."""
    parser = subparsers.add_parser("index", help="build a BM25 or dense (FAISS) index over a corpus",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, IndexConfig)
    return parser


def _build_bm25(cfg: IndexConfig, corpus: Any, out: Path) -> dict[str, Any] | None:
    from densekd.index.bm25 import BM25Index

    BM25Index(**asdict(cfg.bm25)).index(corpus).save(out / "bm25")
    return {}


def _build_dense(cfg: IndexConfig, corpus: Any, out: Path) -> dict[str, Any] | None:
    from densekd.encoders.dense import resolve_model_path
    from densekd.encoders.onnx_backend import load_encoder
    from densekd.index.dense_search import default_fingerprint
    from densekd.index.encode import encode_corpus

    encoder = load_encoder(cfg.model, cfg.backend, passage_max_length=cfg.max_length)
    # The fingerprint hashes the weights and config: cached embeddings of another model are never reused.
    store = encode_corpus(encoder, corpus, out / "embeddings", batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                          fingerprint=default_fingerprint(encoder), num_shards=cfg.num_shards,
                          shard_index=cfg.shard_index)
    if store is None:  # a shard whose embeddings another process completes
        return None
    store.to_faiss(cfg.factory, metric="ip").save(out / "faiss")
    return {"model": resolve_model_path(cfg.model), "max_length": cfg.max_length, "factory": cfg.factory,
            "backend": cfg.backend}


def main(args: argparse.Namespace) -> int:
    """Run ``densekd index``."""
    cfg = config_from_args(args, IndexConfig)
    from densekd.data.beir import load_corpus
    from densekd.data.io import write_json
    from densekd.index.shards import ShardSpec, resolve_shards

    corpus = load_corpus(cfg.corpus, allow_empty=cfg.allow_empty)
    out = Path(cfg.out)
    shard = resolve_shards(cfg.num_shards, cfg.shard_index) if cfg.kind == "dense" else ShardSpec()
    # An interrupted rebuild must not look finished. Shard 0 only: it starts before the index can be
    # complete, whereas a late shard could delete the marker its peer has just written.
    if shard.index == 0:
        (out / MANIFEST).unlink(missing_ok=True)
    build = _build_bm25 if cfg.kind == "bm25" else _build_dense
    extra = build(cfg, corpus, out)
    if extra is None:
        print(f"densekd index: shard {shard.index} of {shard.num_shards} encoded; the process that completes "
              f"{out / 'embeddings'} builds the index", file=sys.stderr)
        return 0
    manifest = {"kind": cfg.kind, "corpus": str(cfg.corpus), "passages": len(corpus), **extra}
    write_json(out / MANIFEST, manifest)
    print(f"densekd index: {len(corpus)} passages -> {out} ({cfg.kind})", file=sys.stderr)
    return 0
