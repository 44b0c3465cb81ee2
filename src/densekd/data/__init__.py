"""Data layer: typed records (:mod:`.types`), file helpers (:mod:`.io`) and format loaders/writers.

Each format module documents its file formats in its docstring: :mod:`.beir` (BEIR folders),
:mod:`.msmarco` (collection/queries/qrels/triples TSV), :mod:`.dpr` (DPR json, ``psgs_w100.tsv``)
and :mod:`.trec` (run files).
"""

from __future__ import annotations

from densekd.data.beir import (
    BeirData, iter_corpus, load_beir, load_corpus, load_qrels, load_queries, write_corpus, write_qrels,
    write_queries,
)
from densekd.data.dpr import DprData, iter_psgs, load_dpr, load_psgs, write_dpr, write_psgs
from densekd.data.io import DataFormatError, stable_id
from densekd.data.msmarco import (
    TriplesData, groups_to_triples, iter_collection, iter_triples, load_collection, load_id_triples,
    load_text_triples, load_trec_qrels, load_tsv_queries, write_collection, write_triples, write_trec_qrels,
    write_tsv_queries,
)
from densekd.data.trec import load_run, write_run
from densekd.data.types import Corpus, Passage, Qrels, Queries, Query, Run, TrainGroup, top_k

__all__ = [
    # records
    "Corpus", "Passage", "Qrels", "Queries", "Query", "Run", "TrainGroup", "top_k",
    "DataFormatError", "stable_id",
    # BEIR
    "BeirData", "iter_corpus", "load_beir", "load_corpus", "load_qrels", "load_queries",
    "write_corpus", "write_qrels", "write_queries",
    # MS MARCO
    "TriplesData", "groups_to_triples", "iter_collection", "iter_triples", "load_collection",
    "load_id_triples", "load_text_triples", "load_trec_qrels", "load_tsv_queries", "write_collection",
    "write_triples", "write_trec_qrels", "write_tsv_queries",
    # DPR
    "DprData", "iter_psgs", "load_dpr", "load_psgs", "write_dpr", "write_psgs",
    # TREC runs
    "load_run", "write_run",
]
