"""Config loading: YAML file < command-line options < --set, type checks, nested sections."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from densekd.cli.config import add_config_arguments, config_from_args, load_config
from densekd.data.io import DataFormatError


@dataclass
class Optim:
    lr: float = 1e-5
    schedule: Literal["linear", "cosine"] = "linear"


@dataclass
class Cfg:
    data: str = field(metadata={"help": "input file"})
    k: int = field(default=10, metadata={"help": "cutoff"})
    tag: str = "run"
    model: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["map"])
    fp16: bool = False
    optim: Optim = field(default_factory=Optim)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_file_and_override_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "data: a.jsonl\nk: 5\ntag: from-file\noptim:\n  lr: 0.001\n")
    cfg = load_config(path, ["k=7", "k=8"], Cfg)  # later --set wins
    assert cfg == Cfg(data="a.jsonl", k=8, tag="from-file", optim=Optim(lr=0.001))
    # options sit between the file and --set
    cfg = load_config(path, ["tag=set"], Cfg, flags={"k": 3, "tag": "flag"})
    assert (cfg.k, cfg.tag) == (3, "set")


def test_override_values_are_yaml_but_strings_stay_raw() -> None:
    cfg = load_config(None, ["data=x", "metrics=[ndcg@10, map]", "fp16=true", "model=null",
                             "tag=007", "optim.lr=3", "optim.schedule=cosine"], Cfg)
    assert cfg.metrics == ["ndcg@10", "map"] and cfg.fp16 is True and cfg.model is None
    assert cfg.tag == "007"  # YAML would read 7; a str field keeps the text
    assert cfg.optim == Optim(lr=3.0, schedule="cosine")  # int accepted for float
    assert load_config(None, ["data=yes"], Cfg).data == "yes"
    # text YAML would change: a comment sign, a trailing space; a quoted scalar is unquoted
    cfg = load_config(None, ["data=runs/exp #2", "tag=query ", "model='a b'"], Cfg)
    assert (cfg.data, cfg.tag, cfg.model) == ("runs/exp #2", "query ", "a b")


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data: a\nbatch: 3\n")
    with pytest.raises(DataFormatError) as err:
        load_config(path, [], Cfg)
    assert str(path) in str(err.value) and "'batch'" in str(err.value) and "valid keys" in str(err.value)
    with pytest.raises(DataFormatError, match=r"unknown key 'optim\.momentum'"):
        load_config(write(tmp_path, "data: a\noptim: {momentum: 0.9}\n"), [], Cfg)


def test_unknown_key_in_override() -> None:
    with pytest.raises(DataFormatError, match=r"--set optim\.nope=1: unknown key 'optim\.nope'"):
        load_config(None, ["data=a", "optim.nope=1"], Cfg)
    with pytest.raises(DataFormatError, match="unknown key 'nope'"):
        load_config(None, ["nope.lr=1"], Cfg)
    with pytest.raises(DataFormatError, match="KEY=VALUE"):
        load_config(None, ["k"], Cfg)


def test_wrong_types_name_key_and_expected_type(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"key 'k' must be int, got str 'ten'"):
        load_config(None, ["data=a", "k=ten"], Cfg)
    with pytest.raises(DataFormatError, match=r"key 'fp16' must be bool"):
        load_config(None, ["data=a", "fp16=3"], Cfg)
    with pytest.raises(DataFormatError, match=r"key 'optim.schedule' must be one of 'linear', 'cosine'"):
        load_config(None, ["data=a", "optim.schedule=step"], Cfg)
    path = write(tmp_path, "data: a\nmetrics: map\n")
    with pytest.raises(DataFormatError, match=r"cfg\.yaml: key 'metrics' must be list of str"):
        load_config(path, [], Cfg)
    with pytest.raises(DataFormatError, match=r"key 'optim' is a section"):
        load_config(write(tmp_path, "data: a\noptim: 3\n"), [], Cfg)


def test_missing_required_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="missing required setting.*data"):
        load_config(None, [], Cfg)
    with pytest.raises(DataFormatError, match=r"cfg\.yaml:2: invalid YAML"):
        load_config(write(tmp_path, 'data: a\nk: "x" y\n'), [], Cfg)
    with pytest.raises(DataFormatError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), [], Cfg)
    with pytest.raises(DataFormatError, match="file not found"):
        load_config(tmp_path / "absent.yaml", [], Cfg)


def test_argparse_bridge(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Cfg)
    path = write(tmp_path, "data: file.jsonl\nk: 5\ntag: t\n")
    args = parser.parse_args(["--config", str(path), "--k", "6", "--metrics", "a", "b", "--fp16",
                              "--set", "tag=s", "--set", "optim.lr=0.5"])
    cfg = config_from_args(args, Cfg)
    assert cfg == Cfg(data="file.jsonl", k=6, tag="s", metrics=["a", "b"], fp16=True, optim=Optim(lr=0.5))
    # options left out do not override the file with their defaults
    assert config_from_args(parser.parse_args(["--config", str(path)]), Cfg).k == 5
    help_text = parser.format_help()
    assert "--data DATA" in help_text and "input file (required)" in help_text and "cutoff (default: 10)" in help_text


def test_float_field_accepts_exponent_without_a_dot():
    from dataclasses import dataclass

    from densekd.cli.config import load_config

    @dataclass
    class Cfg:
        lr: float = 0.1

    assert load_config(None, ["lr=1e-4"], Cfg).lr == 1e-4
    with pytest.raises(DataFormatError, match="must be float"):
        load_config(None, ["lr=fast"], Cfg)
