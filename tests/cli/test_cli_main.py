"""The `densekd` command line: help texts, `evaluate` end to end, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekd.cli.main import COMMANDS, main


def test_top_level_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name.replace("_", "-") in out for name in COMMANDS) and "typical workflow" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command: str, capsys) -> None:
    assert main([command.replace("_", "-"), "--help"]) == 0
    out = capsys.readouterr().out
    # pipeline commands take the config file as their positional argument, the others as --config
    assert "examples:" in out and ("--config" in out or "CONFIG.yaml" in out) and "--set" in out


def test_usage_errors_return_2(capsys) -> None:
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["evaluate", "--k", "3"]) == 2  # argparse: unrecognised option
    capsys.readouterr()


# Toy qrels (conftest): q1 {d1}, q2 {d2}, q3 {d3: 2, d1: 0}, q4 {d7}, q5 {d8}
TOY_RUN = [
    ("q1", "d1", 3.0), ("q1", "d2", 2.0),
    ("q2", "d5", 3.0), ("q2", "d2", 2.0),
    ("q3", "d1", 3.0), ("q3", "d3", 2.0),
    ("q4", "d7", 3.0),
    # q5 absent: scores 0
]


def write_run(path: Path, rows=TOY_RUN) -> Path:
    lines = [f"{qid} Q0 {pid} 0 {score} toy" for qid, pid, score in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_end_to_end(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    run = write_run(tmp_path / "run.trec")
    # queries.jsonl holds every split: an unjudged QA query must not enter the answer-recall mean
    queries = tmp_path / "queries.jsonl"
    queries.write_text((toy_beir_dir / "queries.jsonl").read_text(encoding="utf-8")
                       + json.dumps({"_id": "q9", "text": "other split", "answers": ["x"]}) + "\n", encoding="utf-8")
    out_json = tmp_path / "res" / "metrics.json"
    code, out, err = run_cli(["evaluate", "--run", run, "--qrels", toy_beir_dir / "qrels" / "dev.tsv",
                              "--metrics", "mrr@10", "recall@1", "--out", out_json,
                              "--queries", queries, "--corpus", toy_beir_dir / "corpus.jsonl",
                              "--ks", "1", "5"], capsys)
    assert code == 0, err
    # RR per query: q1 1, q2 1/2, q3 1/2, q4 1, q5 0 -> 3/5; recall@1: q1, q4 -> 2/5
    # answer recall: q4 (Paris) hit at rank 1; q5 (Broncos) missing from the run -> 1/2 at k = 1 and 5
    expected = {"mrr@10": 0.6, "recall@1": 0.4, "answer_recall@1": 0.5, "answer_recall@5": 0.5}
    assert json.loads(out_json.read_text()) == pytest.approx(expected)
    assert "mrr@10" in out and "0.6000" in out and "1 missing from the run" in out


def test_evaluate_with_config_file_and_set(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"run: {write_run(tmp_path / 'run.trec')}\nqrels: {toy_beir_dir / 'qrels' / 'dev.tsv'}\n"
                   f"metrics: [ndcg@10]\n", encoding="utf-8")
    code, out, err = run_cli(["evaluate", "--config", cfg, "--set", "metrics=[recall@1]",
                              "--out", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx({"recall@1": 0.4})


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densekd: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def test_evaluate_missing_run_file(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    missing = tmp_path / "nope.trec"
    code, _, err = run_cli(["evaluate", "--run", missing, "--qrels", toy_beir_dir / "qrels" / "dev.tsv"], capsys)
    assert_one_line_error(code, err, str(missing), "not found")


def test_evaluate_malformed_run_names_file_and_line(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 t\nq2 Q0 d2 1\n", encoding="utf-8")
    code, _, err = run_cli(["evaluate", "--run", bad, "--qrels", toy_beir_dir / "qrels" / "dev.tsv"], capsys)
    assert_one_line_error(code, err, f"{bad}:2:")


def test_evaluate_bad_settings(tmp_path: Path, toy_beir_dir: Path, capsys) -> None:
    run, qrels = write_run(tmp_path / "run.trec"), toy_beir_dir / "qrels" / "dev.tsv"
    code, _, err = run_cli(["evaluate", "--run", run, "--qrels", qrels, "--metrics", "bleu"], capsys)
    assert_one_line_error(code, err, "unknown metric 'bleu'", "valid metrics")
    code, _, err = run_cli(["evaluate", "--run", run], capsys)
    assert_one_line_error(code, err, "missing required setting(s): qrels")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("run: x\nmetric: [map]\n", encoding="utf-8")
    code, _, err = run_cli(["evaluate", "--config", cfg], capsys)
    assert_one_line_error(code, err, str(cfg), "unknown key 'metric'")
    code, _, err = run_cli(["evaluate", "--run", run, "--qrels", qrels, "--queries", qrels], capsys)
    assert_one_line_error(code, err, "both --queries and --corpus")
    code, _, err = run_cli(["evaluate", "--run", run, "--qrels", qrels, "--set", "ks=[0]"], capsys)
    assert_one_line_error(code, err, "ks must be positive")
