"""``densekd index``: build a BM25 or a dense (FAISS) index over a BEIR ``corpus.jsonl``.

Output folder (data contract, read by ``densekd search``)
---------------------------------------------------------
* ``densekd_index.json``: ``{"kind": "bm25"|"dense", "corpus": str, "passages": int}`` plus, for
  dense, ``"model"`` (resolved checkpoint path), ``"max_length"``, ``"factory"`` and ``"backend"``; ``search``
  takes the kind and the model from it.
* The whole folder is built under a temporary name beside ``--out`` and published in one step
  (:func:`densekd.index._storage.atomic_dir`): a failed or interrupted (re)build leaves an existing
  index untouched and a new ``--out`` absent; simultaneous builds of one ``--out`` end with one of them.
* ``bm25/``: a :class:`~densekd.index.bm25.BM25Index` folder (kind ``bm25``);
* ``faiss/``: a :class:`~densekd.index.faiss_index.FaissIndex` folder and ``embeddings/``: the
  passage embeddings of :func:`~densekd.index.encode.encode_corpus` (kind ``dense``). Embeddings are
  kept so that an interrupted run resumes and another FAISS factory can be built without re-encoding.

Sharded encoding (dense): ``--num-shards N --shard-index K`` in N separate processes, or N ranks of
``torchrun`` (defaults from ``WORLD_SIZE`` / ``RANK``), all with the same ``--out``. Each encodes its
share into ``.<out name>.embeddings/`` beside ``--out`` (resumable; moved into the index as
``embeddings/`` when it is published); the process that completes it (rank 0 under torchrun) builds
``faiss/``, writes ``densekd_index.json`` and publishes the folder, the others exit 0 after their share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from densekd.cli.config import add_config_arguments, config_from_args, settings_help
from densekd.data.io import DataFormatError

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
    out: str = field(metadata={"help": "output folder (created; an index already there is replaced when the new "
                                       "one is complete; a folder of other files is refused)", "metavar": "DIR"})
    kind: Literal["bm25", "dense"] = field(default="bm25", metadata={"help": "lexical BM25 or dense embeddings"})
    model: str | None = field(default=None, metadata={
        "help": "dense only: encoder checkpoint (HF, sentence-transformers or densekd folder); "
                "default: bundled all-MiniLM-L6-v2", "metavar": "PATH"})
    factory: str = field(default="Flat", metadata={
        "help": "dense only: FAISS index_factory string, e.g. Flat, HNSW32, IVF1024,PQ64"})
    batch_size: int = field(default=64, metadata={"help": "dense only: passages per encoder batch"})
    max_length: int | None = field(default=None, metadata={
        "help": "dense only: passage length limit in tokens (default: the model's own, as trained; 256 for a "
                "plain checkpoint)"})
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
        from densekd.encoders.onnx_backend import BACKENDS
        from densekd.pipeline.validate import check_numbers

        check_numbers(self)  # every number finite and in range (bm25.k1 > 0, 0 <= bm25.b <= 1, ...), naming the key
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


def _bm25_index(cfg: IndexConfig, corpus: Any, source: str | None) -> Any:
    from densekd.index.bm25 import BM25Index

    try:
        index = BM25Index(**asdict(cfg.bm25))
    except ValueError as e:  # a bad k1, b, method or stemmer: name the config section
        raise DataFormatError(source, f"bm25.{e}") from None
    return index.index(corpus)


def _faiss_reason(error: Exception) -> str:
    # faiss prefixes its messages with the C++ function and source position: keep the reason only
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.rsplit(": ", 1)[-1] if "Error in " in text else text


def _load_encoder(cfg: IndexConfig) -> Any:
    """The encoder, after every check that can fail without encoding (model, max_length, factory)."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.encoders.onnx_backend import require, with_backend
    from densekd.index.faiss_index import FaissIndex

    if cfg.backend != "torch":  # a missing onnxruntime is reported before any weight is loaded
        require("onnxruntime", f"backend {cfg.backend!r}")
    # no --max-length: the length the model was trained and saved with, as the pipeline encodes it
    length = {} if cfg.max_length is None else {"passage_max_length": cfg.max_length}
    encoder = DenseEncoder.from_pretrained(cfg.model, **length)
    limit = getattr(encoder.passage_model.config, "max_position_embeddings", None)
    if limit is not None and encoder.config.passage_max_length > limit:
        raise DataFormatError(None, f"key 'max_length' must be <= {limit} (the model's position limit), "
                                    f"got {encoder.config.passage_max_length}")
    try:
        FaissIndex(encoder.dim, cfg.factory, "ip")
    except ValueError as e:
        raise DataFormatError(None, f"key 'factory': invalid faiss factory string {cfg.factory!r} "
                                    f"({_faiss_reason(e)})") from None
    return with_backend(encoder, cfg.backend)


def _staged_embeddings(out: Path) -> Path:
    """The resumable embeddings folder of a dense build of ``out``: a hidden sibling, so the build never
    writes into ``out`` itself (a working index there stays intact until the new one replaces it).

    It starts as a hard-linked copy of ``out/embeddings`` when there is one, so another factory or a
    rebuild reuses the vectors already encoded (files are replaced, never changed in place).
    """
    stage = out.parent / f".{out.name}.embeddings"
    if not stage.exists() and (out / "embeddings").is_dir():
        # copied under a temporary name first: shards started together must not see a half copy
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".stage", dir=out.parent))
        try:
            shutil.copytree(out / "embeddings", tmp / "embeddings", copy_function=_link_or_copy)
            os.rename(tmp / "embeddings", stage)
        except OSError:
            if not stage.is_dir():  # not a peer that staged it first: a real failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return stage


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _build_dense(cfg: IndexConfig, corpus: Any, out: Path) -> None:
    from densekd.data.io import write_json
    from densekd.encoders.dense import resolve_model_path
    from densekd.index._storage import atomic_dir
    from densekd.index.dense_search import default_fingerprint
    from densekd.index.encode import encode_corpus
    from densekd.index.shards import resolve_shards

    shard = resolve_shards(cfg.num_shards, cfg.shard_index)
    encoder = _load_encoder(cfg)
    stage = _staged_embeddings(out)
    # The fingerprint hashes the weights and config: cached embeddings of another model are never reused.
    store = encode_corpus(encoder, corpus, stage, batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                          fingerprint=default_fingerprint(encoder), num_shards=cfg.num_shards,
                          shard_index=cfg.shard_index)
    if store is None:  # a shard whose embeddings another process completes
        print(f"densekd index: shard {shard.index} of {shard.num_shards} encoded; the process that completes "
              f"{stage} builds the index", file=sys.stderr)
        return
    extra = {"model": resolve_model_path(cfg.model), "max_length": encoder.config.passage_max_length,
             "factory": cfg.factory, "backend": cfg.backend}
    with atomic_dir(out) as tmp:
        try:
            store.to_faiss(cfg.factory, metric="ip").save(tmp / "faiss")
        except (ValueError, RuntimeError) as e:  # e.g. an IVF factory with more lists than passages
            # bad input writes nothing: the vectors go too (a rerun with a valid factory re-encodes)
            shutil.rmtree(stage, ignore_errors=True)
            raise DataFormatError(None, f"key 'factory': cannot build {cfg.factory!r} over "
                                        f"{len(corpus)} passages ({_faiss_reason(e)})") from None
        write_json(tmp / MANIFEST, {"kind": "dense", "corpus": str(cfg.corpus), "passages": len(corpus), **extra})
        os.replace(stage, tmp / "embeddings")  # last: a failure above keeps the vectors for a rerun
    print(f"densekd index: {len(corpus)} passages -> {out} (dense)", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run ``densekd index``: build the whole folder under a temporary name, publish it in one step."""
    cfg = config_from_args(args, IndexConfig)
    from densekd.cli.outputs import check_model_folder, check_output
    from densekd.data.beir import load_corpus
    from densekd.data.io import write_json
    from densekd.index._storage import atomic_dir

    out = check_output("--out", cfg.out, {"--corpus": cfg.corpus, "--model": cfg.model}, kind="dir")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        # publishing replaces the whole folder: never delete a folder of the user's own files
        raise DataFormatError(out, "--out is a folder that holds files but no densekd index "
                                   f"(no {MANIFEST}): refusing to replace it (choose a new or empty folder)")
    if cfg.kind == "dense":
        check_model_folder("--model", cfg.model)
    corpus = load_corpus(cfg.corpus, allow_empty=cfg.allow_empty)
    if not corpus:
        raise DataFormatError(cfg.corpus, "the corpus is empty: nothing to index")
    if cfg.kind == "dense":
        _build_dense(cfg, corpus, out)
        return 0
    index = _bm25_index(cfg, corpus, getattr(args, "config", None))
    with atomic_dir(out) as tmp:  # a failed rebuild leaves a working index in `out` untouched
        index.save(tmp / "bm25")
        write_json(tmp / MANIFEST, {"kind": "bm25", "corpus": str(cfg.corpus), "passages": len(corpus)})
    print(f"densekd index: {len(corpus)} passages -> {out} (bm25)", file=sys.stderr)
    return 0
