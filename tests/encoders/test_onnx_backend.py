"""ONNX Runtime backends: agreement with the torch path, export caching, missing-dependency errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densekd.cli.main import main as cli_main
from densekd.encoders.dense import DenseEncoder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from densekd.encoders.onnx_backend import OnnxDenseEncoder, load_encoder

TEXTS = ["a", "aspirin reduces the risk of heart attack in adults",
         "vitamin c does not prevent the common cold, " * 6, "paris", "smoking causes lung cancer and heart disease"]
QUERIES = ["what causes lung cancer", "capital of france", "aspirin"]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny(tiny_bert_path: str) -> DenseEncoder:
    return DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=48, query_max_length=16)


def test_onnx_fp32_matches_torch(tiny: DenseEncoder, tmp_path: Path) -> None:
    onnx = OnnxDenseEncoder(tiny, "onnx", export_root=tmp_path)
    # batch size 2: batches of unequal length and padding, so the mask handling is exercised
    for got, ref in ((onnx.encode_passages(TEXTS, batch_size=2, show_progress=False),
                      tiny.encode_passages(TEXTS, batch_size=2, show_progress=False)),
                     (onnx.encode_queries(QUERIES, batch_size=2), tiny.encode_queries(QUERIES, batch_size=2))):
        assert got.shape == ref.shape and got.dtype == np.float32
        assert _cosine(got, ref).min() >= 1 - 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # same normalisation


def test_int8_close_to_fp32(tiny: DenseEncoder, tmp_path: Path) -> None:
    enc = OnnxDenseEncoder(tiny, "onnx-int8", export_root=tmp_path)
    got = enc.encode_passages(TEXTS, batch_size=2, show_progress=False)
    ref = tiny.encode_passages(TEXTS, batch_size=2, show_progress=False)
    # On real MiniLM the dynamic int8 variant keeps cosine >= 0.99 to fp32 (min over SciFact passages,
    # see bench/encode_speed.py); the random tiny model has no trained outlier structure, 0.98 is its margin.
    assert _cosine(got, ref).min() >= 0.98
    assert b"MatMulInteger" in enc.model_paths["passage"].read_bytes()  # int8 kernels, not fp32 ones


def test_export_is_cached_and_reused(tiny: DenseEncoder, tmp_path: Path) -> None:
    first = OnnxDenseEncoder(tiny, "onnx", export_root=tmp_path).model_paths["passage"]
    mtime = first.stat().st_mtime_ns
    second = OnnxDenseEncoder(tiny, "onnx", export_root=tmp_path).model_paths["passage"]
    assert second == first and second.stat().st_mtime_ns == mtime  # not re-exported
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # no temporary folder left behind
    # another backend and changed weights each get their own export
    assert OnnxDenseEncoder(tiny, "onnx-int8", export_root=tmp_path).model_paths["passage"] != first
    import torch

    changed = DenseEncoder.from_pretrained(tiny.source_path, passage_max_length=48)
    with torch.no_grad():
        changed.passage_model.embeddings.word_embeddings.weight[5] += 1.0
    assert OnnxDenseEncoder(changed, "onnx", export_root=tmp_path).model_paths["passage"] != first


def test_default_export_location_is_beside_the_checkpoint(tiny_bert_path: str, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_path, model, ignore=shutil.ignore_patterns("onnx"))
    enc = load_encoder(model, "onnx")
    assert enc.model_paths["passage"].parent.parent == model / "onnx"


def test_cli_index_and_search_with_backend_and_latency(tiny_bert_path: str, toy_beir_dir: Path,
                                                       tmp_path: Path, capsys) -> None:
    from densekd.data.trec import load_run

    idx = tmp_path / "idx"
    args = ["--corpus", str(toy_beir_dir / "corpus.jsonl"), "--kind", "dense", "--model", tiny_bert_path,
            "--max-length", "32", "--batch-size", "4"]
    assert cli_main(["index", *args, "--out", str(idx), "--backend", "onnx"]) == 0
    assert cli_main(["index", *args, "--out", str(tmp_path / "ref")]) == 0
    assert json.loads((idx / "densekd_index.json").read_text())["backend"] == "onnx"
    queries = str(toy_beir_dir / "queries.jsonl")
    lat_path = tmp_path / "lat.json"
    assert cli_main(["search", "--index", str(idx), "--queries", queries, "-k", "3", "--out",
                     str(tmp_path / "onnx.trec"), "--latency", "--latency-out", str(lat_path)]) == 0
    assert "p50" in capsys.readouterr().err
    lat = json.loads(lat_path.read_text())
    assert lat["backend"] == "onnx" and lat["n"] == 5 and 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    assert cli_main(["search", "--index", str(tmp_path / "ref"), "--queries", queries, "-k", "3", "--out",
                     str(tmp_path / "torch.trec")]) == 0
    got, ref = load_run(tmp_path / "onnx.trec"), load_run(tmp_path / "torch.trec")
    assert got.keys() == ref.keys()
    for qid in ref:  # same passages, same scores up to float error
        assert got[qid].keys() == ref[qid].keys()
        assert max(abs(got[qid][p] - ref[qid][p]) for p in ref[qid]) < 1e-4
