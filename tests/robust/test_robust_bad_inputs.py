"""Bad user input through the ``densekd`` CLI: exit status 2, one ``densekd: error:`` line on stderr
naming the file (and ``:LINE`` where the problem sits on one line), and no output written.

Files no CLI command reads directly (FlagEmbedding imports, teacher-score files) go through their
loaders in a second group: a :class:`DataFormatError` naming file and line.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from densekd.cli.main import main
from densekd.data.io import DataFormatError

GOOD_CORPUS = [{"_id": "d1", "title": "A", "text": "aspirin heart"}, {"_id": "d2", "title": "B", "text": "paris france"}]


@dataclass
class Env:
    tmp: Path
    beir: Path
    bert: str
    bm25: Path  # a finished `densekd index` folder over the toy corpus (read-only)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _text(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _good_run(env: Env) -> Path:
    return _text(env.tmp / "run.trec", "q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\n")


def _good_qrels(env: Env) -> Path:
    return _text(env.tmp / "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")


# Each case: env -> (argv, file the message must name, line or None, output path that must not appear)
Case = Callable[[Env], tuple[list[str], Path, "int | None", Path]]


def _index_corpus(rows_or_bytes) -> Case:
    def case(env: Env):
        path = env.tmp / "corpus.jsonl"
        if isinstance(rows_or_bytes, bytes):
            _text(path, rows_or_bytes)
        else:
            _jsonl(path, rows_or_bytes)
        out = env.tmp / "idx"
        return ["index", "--corpus", str(path), "--out", str(out)], path, 2, out
    return case


def _evaluate(run: str | None = None, qrels: str | None = None, line: int | None = None, bad: str = "run") -> Case:
    def case(env: Env):
        run_path = _text(env.tmp / "run.trec", run) if run is not None else _good_run(env)
        qrels_path = _text(env.tmp / "qrels.tsv", qrels) if qrels is not None else _good_qrels(env)
        out = env.tmp / "metrics.json"
        argv = ["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "--out", str(out)]
        return argv, run_path if bad == "run" else qrels_path, line, out
    return case


def _evaluate_config(text: str | bytes, line: int | None = None) -> Case:
    def case(env: Env):
        cfg = _text(env.tmp / "eval.yaml", text)
        out = env.tmp / "metrics.json"
        argv = ["evaluate", "--config", str(cfg), "--run", str(_good_run(env)), "--qrels", str(_good_qrels(env)),
                "--out", str(out)]
        return argv, cfg, line, out
    return case


def _search(queries: list | None = None, qrels: str | None = None, line: int | None = None) -> Case:
    def case(env: Env):
        q = _jsonl(env.tmp / "queries.jsonl", queries) if queries is not None else env.beir / "queries.jsonl"
        out = env.tmp / "run.trec"
        argv = ["search", "--index", str(env.bm25), "--queries", str(q), "--out", str(out)]
        bad = q
        if qrels is not None:
            bad = _text(env.tmp / "qrels.tsv", qrels)
            argv += ["--qrels", str(bad)]
        return argv, bad, line, out
    return case


def _tampered_dense_index(env: Env):
    from densekd.cli.commands.index import MANIFEST
    from densekd.index.faiss_index import FaissIndex

    root = env.tmp / "dense_idx"
    index = FaissIndex(32)
    index.add(["d1", "d2", "d3"], np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32))
    index.save(root / "faiss")
    (root / MANIFEST).write_text(json.dumps({"kind": "dense", "corpus": "c", "passages": 3, "model": env.bert}))
    ids_path = root / "faiss" / "ids.npy"
    np.save(ids_path, np.array(["d1", "d2"]))  # one id short of the 3 vectors
    out = env.tmp / "run.trec"
    return ["search", "--index", str(root), "--queries", str(env.beir / "queries.jsonl"), "--out", str(out)], \
        ids_path, None, out


def _model_without_weights(env: Env):
    model = env.tmp / "no_weights"
    shutil.copytree(env.bert, model)
    for weights in [*model.glob("*.safetensors"), *model.glob("*.bin")]:
        weights.unlink()
    out = env.tmp / "idx"
    return ["index", "--corpus", str(env.beir / "corpus.jsonl"), "--out", str(out), "--kind", "dense",
            "--model", str(model)], model, None, out


def _missing_run(env: Env):
    out, missing = env.tmp / "metrics.json", env.tmp / "nope.trec"
    return ["evaluate", "--run", str(missing), "--qrels", str(_good_qrels(env)), "--out", str(out)], missing, None, out


def _pipeline(mutate: Callable[[Env, Path, dict], Path], line: int | None = None) -> Case:
    """``densekd mine CONFIG`` on a copy of the toy set; ``mutate(env, data_root, cfg)`` breaks something
    and returns the file the error must name."""
    def case(env: Env):
        import yaml

        root = env.tmp / "data"
        shutil.copytree(env.beir, root)
        out = env.tmp / "out"
        cfg = {"name": "toy", "output_dir": str(out), "cache_dir": str(env.tmp / "cache"),
               "data": {"root": str(root)}, "teacher": {"model": env.bert}, "student": {"model": env.bert}}
        cfg_path = env.tmp / "pipe.yaml"
        bad = mutate(env, root, cfg)
        cfg_path.write_text(yaml.safe_dump(cfg))
        return ["mine", str(cfg_path)], bad or cfg_path, line, out
    return case


def _unknown_qrels_id(env: Env, root: Path, cfg: dict) -> Path:
    return _text(root / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td99\t1\n")


def _unknown_qrels_query(env: Env, root: Path, cfg: dict) -> Path:
    return _text(root / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\nq9\td1\t1\n")


def _missing_corpus(env: Env, root: Path, cfg: dict) -> Path:
    (root / "corpus.jsonl").unlink()
    return root / "corpus.jsonl"


def _unknown_pipeline_key(env: Env, root: Path, cfg: dict) -> None:
    cfg["mining"] = {"n_negativs": 3}


def _wrong_pipeline_type(env: Env, root: Path, cfg: dict) -> None:
    cfg["mining"] = {"depth": "deep"}


CLI_CASES: dict[str, Case] = {
    "corpus-truncated-jsonl-line": _index_corpus([GOOD_CORPUS[0], '{"_id": "d2", "text": "par']),
    "corpus-invalid-utf8": _index_corpus(json.dumps(GOOD_CORPUS[0]).encode() + b'\n{"_id": "d2", "text": "\xff\xfe"}\n'),
    "corpus-duplicate-id": _index_corpus([GOOD_CORPUS[0], {**GOOD_CORPUS[1], "_id": "d1"}]),
    "corpus-empty-passage-text": _index_corpus([GOOD_CORPUS[0], {"_id": "d2", "title": "", "text": ""}]),
    "corpus-line-not-an-object": _index_corpus([GOOD_CORPUS[0], "[1, 2]"]),
    "corpus-missing-id-field": _index_corpus([GOOD_CORPUS[0], {"text": "no id"}]),
    "queries-empty-text": _search(queries=[{"_id": "q1", "text": "heart"}, {"_id": "q2", "text": "  "}], line=2),
    "queries-truncated-line": _search(queries=[{"_id": "q1", "text": "heart"}, '{"_id": "q2", "te'], line=2),
    "search-qrels-malformed-line": _search(qrels="query-id\tcorpus-id\tscore\nq1\td1\n", line=2),
    "search-qrels-score-not-int": _search(qrels="q1\td1\tyes\n", line=1),
    "search-tampered-index-id-map": _tampered_dense_index,
    "index-model-folder-without-weights": _model_without_weights,
    "trec-run-too-few-columns": _evaluate(run="q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2\n", line=2),
    "trec-run-score-not-a-number": _evaluate(run="q1 Q0 d1 1 high t\n", line=1),
    "trec-run-duplicate-pair": _evaluate(run="q1 Q0 d1 1 2.5 t\nq1 Q0 d1 2 1.5 t\n", line=2),
    "qrels-malformed-line": _evaluate(qrels="query-id\tcorpus-id\tscore\nq1 d1 1 extra\n", line=2, bad="qrels"),
    "run-file-missing": _missing_run,
    "yaml-syntax-error": _evaluate_config("metrics: [ndcg@10, map\nks: [1]\n", line=2),
    "yaml-not-a-mapping": _evaluate_config("- ndcg@10\n- map\n"),
    "yaml-invalid-utf8": _evaluate_config(b"metrics: [\xff]\n"),
    "config-unknown-key": _evaluate_config("metrcs: [ndcg@10]\n"),
    "config-wrong-type": _evaluate_config("ks: many\n"),
    "config-bad-value": _evaluate_config("ks: [0]\n"),
    "pipeline-qrels-unknown-passage": _pipeline(_unknown_qrels_id, line=3),
    "pipeline-qrels-unknown-query": _pipeline(_unknown_qrels_query, line=2),
    "pipeline-missing-corpus": _pipeline(_missing_corpus),
    "pipeline-unknown-section-key": _pipeline(_unknown_pipeline_key),
    "pipeline-wrong-type": _pipeline(_wrong_pipeline_type),
}


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory, toy_beir_dir) -> Path:
    out = tmp_path_factory.mktemp("bm25") / "idx"
    assert main(["index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, toy_beir_dir, tiny_bert_path, bm25_index,
                                                         capsys):
    argv, bad_file, line, out = CLI_CASES[name](Env(tmp_path, toy_beir_dir, tiny_bert_path, bm25_index))
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert status == 2, f"status {status}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("densekd: error: "), err
    where = f"{bad_file}:{line}:" if line is not None else f"{bad_file}"
    assert where in lines[0], f"expected {where!r} in {lines[0]!r}"
    assert not out.exists(), f"{out} was written"


# ---------------------------------------------------------------- loaders no CLI command reads directly

def _flagembedding_score_mismatch(tmp: Path) -> tuple[Callable[[], object], Path, int]:
    from densekd.teachers.formats import load_flagembedding

    path = _jsonl(tmp / "fe.jsonl", [
        {"query": "q one", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [1.0], "neg_scores": [0.5, 0.1]},
        {"query": "q two", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [1.0], "neg_scores": [0.5]},
    ])
    return lambda: load_flagembedding(path), path, 2


def _flagembedding_truncated(tmp: Path):
    from densekd.teachers.formats import load_flagembedding

    path = _jsonl(tmp / "fe.jsonl", [{"query": "q", "pos": ["p"], "neg": []}, '{"query": "q2", "pos": ['])
    return lambda: load_flagembedding(path), path, 2


def _annotations(rows: list, line: int):
    def case(tmp: Path):
        from densekd.teachers.annotate import load_annotations, make_header

        path = tmp / "scores.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in [make_header("t"), *rows]))
        return lambda: load_annotations(path), path, line
    return case


GROUP = {"qid": "q1", "pos_ids": ["d1"], "neg_ids": ["d2"], "teacher_scores": {"d1": 1.0, "d2": 0.5}}
LOADER_CASES = {
    "flagembedding-score-count-mismatch": _flagembedding_score_mismatch,
    "flagembedding-truncated-line": _flagembedding_truncated,
    "annotations-nan-score": _annotations([GROUP, {**GROUP, "qid": "q2", "teacher_scores": {"d1": math.nan, "d2": 0.5}}], 3),
    "annotations-inf-score": _annotations([{**GROUP, "teacher_scores": {"d1": math.inf, "d2": 0.5}}], 2),
    "annotations-score-ids-mismatch": _annotations([{**GROUP, "teacher_scores": {"d1": 1.0}}], 2),
    "annotations-duplicate-qid": _annotations([GROUP, GROUP], 3),
}


@pytest.mark.parametrize("name", sorted(LOADER_CASES))
def test_bad_file_loader_names_file_and_line(name, tmp_path):
    load, path, line = LOADER_CASES[name](tmp_path)
    with pytest.raises(DataFormatError) as info:
        load()
    err = info.value
    assert err.path == str(path) and err.line == line
    assert str(err).startswith(f"{path}:{line}: ") and "\n" not in str(err)
