"""`densekd index` -> `densekd search` -> `densekd evaluate` on the toy BEIR set (BM25 and a tiny dense model)."""

from __future__ import annotations

import json
from pathlib import Path

from densekd.cli.main import main
from densekd.data.trec import load_run


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_bm25_index_search_evaluate(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    idx, run_path = tmp_path / "idx", tmp_path / "run.trec"
    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", idx, "--set", "bm25.k1=1.2") == 0
    assert json.loads((idx / "densekd_index.json").read_text())["kind"] == "bm25"
    assert cli("search", "--index", idx, "--queries", toy_beir_dir / "queries.jsonl", "--split", "dev",
               "-k", "3", "--out", run_path) == 0
    run = load_run(run_path)
    assert set(run) <= {"q1", "q2", "q3", "q4", "q5"} and all(len(docs) <= 3 for docs in run.values())
    assert max(run["q3"], key=run["q3"].get) == "d3"  # "lung cancer" is lexically unambiguous
    capsys.readouterr()
    assert cli("evaluate", "--run", run_path, "--qrels", toy_beir_dir / "qrels" / "dev.tsv",
               "--metrics", "recall@3", "--out", tmp_path / "m.json") == 0
    assert json.loads((tmp_path / "m.json").read_text())["recall@3"] >= 0.6


def test_dense_index_and_search_use_manifest_model(tmp_path: Path, toy_beir_dir: Path, tiny_bert_path: str) -> None:
    idx, run_path = tmp_path / "idx", tmp_path / "run.trec"
    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", idx, "--kind", "dense",
               "--model", tiny_bert_path, "--batch-size", "4", "--max-length", "32") == 0
    manifest = json.loads((idx / "densekd_index.json").read_text())
    assert manifest["kind"] == "dense" and manifest["model"] == tiny_bert_path
    # no --model: the encoder recorded in the index is used
    assert cli("search", "--index", idx, "--queries", toy_beir_dir / "queries.jsonl", "-k", "2",
               "--out", run_path) == 0
    run = load_run(run_path)
    assert set(run) == {"q1", "q2", "q3", "q4", "q5"} and all(len(docs) == 2 for docs in run.values())


def test_a_trained_model_is_indexed_and_searched_at_its_own_lengths(tmp_path: Path, toy_beir_dir: Path,
                                                                    tiny_bert_path: str, monkeypatch) -> None:
    """Without --max-length the CLI encodes as the pipeline does: at the lengths the model was saved with
    (a student trained at 24 / 12 tokens is not re-encoded at 256 / 64)."""
    from densekd.encoders.dense import DenseEncoder

    model = tmp_path / "student"
    DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=24, query_max_length=12).save_pretrained(model)
    idx = tmp_path / "idx"
    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", idx, "--kind", "dense",
               "--model", model, "--batch-size", "4") == 0
    assert json.loads((idx / "densekd_index.json").read_text())["max_length"] == 24
    seen = []
    original = DenseEncoder.encode_queries

    def spy(self, *args, **kwargs):
        seen.append(self.config.query_max_length)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DenseEncoder, "encode_queries", spy)
    assert cli("search", "--index", idx, "--queries", toy_beir_dir / "queries.jsonl", "-k", "2",
               "--out", tmp_path / "run.trec") == 0
    assert seen and set(seen) == {12}


def test_search_errors(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    queries = toy_beir_dir / "queries.jsonl"
    assert cli("search", "--index", tmp_path, "--queries", queries, "--out", tmp_path / "r.trec") == 2
    assert "not an index folder" in capsys.readouterr().err
    idx = tmp_path / "idx"
    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", idx) == 0
    assert cli("search", "--index", idx, "--queries", queries, "--split", "test", "--out", tmp_path / "r") == 2
    assert "test.tsv" in capsys.readouterr().err
