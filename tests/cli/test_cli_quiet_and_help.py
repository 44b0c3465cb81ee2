"""The command line a newcomer sees: quiet library logs, documented settings, the config YAML dialect,
and cheap top-level imports."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from densekd.cli.config import field_help, load_config
from densekd.cli.main import main
from densekd.cli.yaml_rules import DuplicateKeyError, load_yaml
from densekd.data.io import DataFormatError
from densekd.pipeline.config import PipelineConfig
from densekd.pipeline.fidkd_config import FidKDConfig
from densekd.pipeline.validate import check_numbers, rule_for


def _fields(schema: type, prefix: str = ""):
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield schema, f, prefix + f.name, hints[f.name]


@pytest.mark.parametrize("schema", [PipelineConfig, FidKDConfig])
def test_every_pipeline_setting_has_help_and_appears_in_run_help(schema, capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for owner, f, key, _ in _fields(schema):
        help_text = field_help(owner, f)
        assert len(help_text) > 10, f"{key} has no help"
        assert f"  {key}: {help_text[:30]}" in text, key


@pytest.mark.parametrize("schema", [PipelineConfig, FidKDConfig])
def test_every_number_of_the_pipeline_configs_has_a_range_rule(schema):
    numeric = [key for _, f, key, tp in _fields(schema)
               if {int, float} & set(typing.get_args(tp) or (tp,)) and f.name not in ("rank_range", "fusion", "seeds")]
    assert numeric
    assert [k for k in numeric if rule_for(k.rsplit(".", 1)[-1]) is None] == []
    check_numbers(schema())  # the defaults obey their own rules


def test_range_errors_name_the_key_and_the_file(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("student:\n  warmup_ratio: 2.0\n")
    with pytest.raises(DataFormatError, match=r"p.yaml: key 'student.warmup_ratio' must be in \[0, 1\), got 2.0"):
        load_config(cfg, [], PipelineConfig)


def test_yaml_dialect_decimal_leading_zeros_and_duplicate_keys():
    assert load_yaml("a: 010\nb: -007\nc: 0x1F\nd: 1_000\ne: 1:30\nf: 0.5\ng: '010'") == {
        "a": 10, "b": -7, "c": 31, "d": 1000, "e": "1:30", "f": 0.5, "g": "010"}
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml("x: 1\nsec:\n  y: 2\n  y: 3\n")
    assert info.value.line == 4 and info.value.first_line == 3
    assert yaml.safe_load("a: 010") == {"a": 8}  # what the plain loader would have made of it


def _stderr_of(argv: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "densekd.cli.main", *argv], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    # progress bars redraw with \r: keep each bar's final state only
    return [line.rsplit("\r", 1)[-1] for line in proc.stderr.splitlines() if line.strip()]


def test_library_chatter_is_hidden_unless_verbose(tmp_path, toy_beir_dir, tiny_bert_path):
    corpus = str(toy_beir_dir / "corpus.jsonl")
    quiet = _stderr_of(["index", "--corpus", corpus, "--out", str(tmp_path / "d"), "--kind", "dense",
                        "--model", tiny_bert_path])
    noisy = [line for line in quiet if "%|" not in line and not line.startswith("densekd ")]
    assert noisy == [], quiet  # no faiss loader lines, no transformers load report
    assert len(quiet) <= 4, quiet  # a bar per long step and the summary
    verbose = _stderr_of(["--verbose", "index", "--corpus", corpus, "--out", str(tmp_path / "b")])
    assert any("bm25s" in line for line in verbose), verbose  # --verbose shows the libraries' INFO


def test_import_densekd_is_cheap_and_exports_the_tour_names():
    code = ("import sys, densekd; heavy = [m for m in ('torch', 'transformers', 'faiss') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "from densekd import DenseEncoder, FaissIndex, BM25Index, DistillTrainer, evaluate, load_beir; "
            "assert set(densekd.__all__) >= {'DenseEncoder', 'FaissIndex', 'BM25Index', 'DistillTrainer', "
            "'evaluate', 'load_beir'}; print(DistillTrainer.__name__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "DistillTrainer", out.stderr


def test_unknown_top_level_name_is_an_attribute_error():
    import densekd

    assert set(densekd.__all__) == {"__version__", *densekd._EXPORTS}
    with pytest.raises(AttributeError):
        densekd.NoSuchThing  # noqa: B018
    assert Path(densekd.__file__).name == "__init__.py"
