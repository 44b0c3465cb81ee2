"""A missing optional dependency gives a clear error naming the package (runs without onnxruntime too)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from densekd.cli.main import main as cli_main
from densekd.encoders.deps import MissingDependencyError
from densekd.encoders.onnx_backend import load_encoder


def test_missing_onnxruntime_names_the_package(tiny_bert_path: str, toy_beir_dir: Path, tmp_path: Path,
                                               monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        load_encoder(tiny_bert_path, "onnx")
    code = cli_main(["index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(tmp_path / "i"),
                     "--kind", "dense", "--model", tiny_bert_path, "--backend", "onnx-int8"])
    err = capsys.readouterr().err
    assert code == 2 and "densekd: error:" in err and "pip install onnxruntime" in err
