"""densekd: distil slow, strong teachers into fast dense retrievers.

The names most scripts need are importable from the top level::

    from densekd import DenseEncoder, FaissIndex, BM25Index, DistillTrainer, evaluate, load_beir

They are loaded lazily (PEP 562 ``__getattr__``): ``import densekd`` stays cheap (no torch, faiss or
transformers), so ``densekd --help`` starts fast and a script pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DataFormatError": "densekd.data.io",
    "load_beir": "densekd.data.beir",
    "load_corpus": "densekd.data.beir",
    "load_queries": "densekd.data.beir",
    "load_qrels": "densekd.data.beir",
    "load_run": "densekd.data.trec",
    "write_run": "densekd.data.trec",
    "DenseEncoder": "densekd.encoders.dense",
    "CrossEncoder": "densekd.encoders.cross_encoder",
    "BM25Index": "densekd.index.bm25",
    "FaissIndex": "densekd.index.faiss_index",
    "evaluate": "densekd.eval.metrics",
    "DistillConfig": "densekd.training.config",
    "DistillTrainer": "densekd.training.trainer",
}

__all__ = [
    "BM25Index", "CrossEncoder", "DataFormatError", "DenseEncoder", "DistillConfig", "DistillTrainer", "FaissIndex",
    "__version__", "evaluate", "load_beir", "load_corpus", "load_qrels", "load_queries", "load_run", "write_run",
]
# (tests check that __all__ and _EXPORTS name the same objects)

if TYPE_CHECKING:  # static checkers and IDEs see the real objects
    from densekd.data.beir import load_beir, load_corpus, load_qrels, load_queries
    from densekd.data.io import DataFormatError
    from densekd.data.trec import load_run, write_run
    from densekd.encoders.cross_encoder import CrossEncoder
    from densekd.encoders.dense import DenseEncoder
    from densekd.eval.metrics import evaluate
    from densekd.index.bm25 import BM25Index
    from densekd.index.faiss_index import FaissIndex
    from densekd.training.config import DistillConfig
    from densekd.training.trainer import DistillTrainer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'densekd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
