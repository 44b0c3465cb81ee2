"""Issue 15's classes of bad input through the ``densekd`` CLI, several cases each.

Every case asserts exit status 2, exactly one ``densekd: error:`` line on stderr that names the file
(and ``:LINE``) or the config key, and that no file under the test folder was written, changed or
deleted (an existing index must stay byte-identical, with its modes, after a failed rebuild).

Classes: silent wrong results (ids, grades, YAML, BM25 parameters, empty inputs); the user's files
destroyed (``--out`` onto an input, failed rebuilds); tracebacks instead of an answer (model paths,
corrupt manifests, bad output paths); pipeline numbers never range-checked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from densekd.cli.main import main


@dataclass
class Env:
    tmp: Path
    beir: Path
    bert: str
    bm25: Path  # a finished `densekd index` folder over the toy corpus (copied into tmp by cases that rebuild)


def _text(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _run(env: Env) -> Path:
    return _text(env.tmp / "run.trec", "q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\n")


def _qrels(env: Env, text: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\n") -> Path:
    return _text(env.tmp / "qrels.tsv", text)


def _own_index(env: Env) -> Path:
    """A copy of the toy BM25 index inside the test folder: a rebuild target that must survive."""
    out = env.tmp / "idx"
    shutil.copytree(env.bm25, out)
    return out


# A case: env -> (argv, text the error line must contain)
Case = Callable[[Env], tuple[list[str], str]]


def evaluate_with(run: str | None = None, qrels: str | None = None, extra: tuple[str, ...] = (),
                  needle: Callable[[Env, Path, Path], str] = lambda env, run, qrels: str(qrels)) -> Case:
    def case(env: Env):
        run_path = _text(env.tmp / "run.trec", run) if run is not None else _run(env)
        qrels_path = _qrels(env, qrels) if qrels is not None else _qrels(env)
        argv = ["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), *extra]
        return argv, needle(env, run_path, qrels_path)
    return case


def search_with(queries: str | None = None, out: Callable[[Env], str] = lambda env: str(env.tmp / "out.trec"),
                extra: tuple[str, ...] = (), needle: Callable[[Env, Path], str] = lambda env, q: str(q),
                index: Callable[[Env], Path] = lambda env: env.bm25) -> Case:
    def case(env: Env):
        q = _text(env.tmp / "queries.jsonl", queries) if queries is not None else env.beir / "queries.jsonl"
        argv = ["search", "--index", str(index(env)), "--queries", str(q), "--out", out(env), *extra]
        return argv, needle(env, q)
    return case


def index_with(corpus: str | None = None, extra: tuple[str, ...] = (), rebuild: bool = False,
               out: Callable[[Env], str] | None = None,
               needle: Callable[[Env, Path, Path], str] = lambda env, corpus, out: str(corpus)) -> Case:
    """``densekd index``; ``rebuild`` puts a working index at ``--out`` first (it must survive)."""
    def case(env: Env):
        path = _text(env.tmp / "corpus.jsonl", corpus) if corpus is not None else env.beir / "corpus.jsonl"
        target = _own_index(env) if rebuild else env.tmp / "idx"
        out_arg = out(env) if out is not None else str(target)
        argv = ["index", "--corpus", str(path), "--out", out_arg, *[a.replace("BERT", env.bert) for a in extra]]
        return argv, needle(env, path, Path(out_arg))
    return case


def pipeline_with(overrides: tuple[str, ...] = (), cfg_update: dict | None = None, cfg_text: str | None = None,
                  needle: str = "") -> Case:
    """``densekd mine CONFIG`` with ``--set`` overrides, extra config keys or a raw config text."""
    def case(env: Env):
        cfg = {"name": "toy", "output_dir": str(env.tmp / "out"), "cache_dir": str(env.tmp / "cache"),
               "data": {"root": str(env.beir)}, "teacher": {"model": env.bert}, "student": {"model": env.bert}}
        for section, values in (cfg_update or {}).items():
            cfg.setdefault(section, {}).update(values) if isinstance(values, dict) else cfg.update({section: values})
        path = _text(env.tmp / "pipe.yaml", cfg_text.replace("BERT", env.bert) if cfg_text else yaml.safe_dump(cfg))
        argv = ["mine", str(path)]
        for item in overrides:
            argv += ["--set", item.replace("RUNFILE", str(_run(env)))]
        return argv, needle.replace("CONFIG", str(path))
    return case


CORPUS = '{"_id": "d1", "title": "A", "text": "aspirin heart"}\n'
TOY_QUERY = '{"_id": "q1", "text": "heart"}\n'

SILENT_WRONG = {
    "qrels-grade-above-int32": evaluate_with(qrels="query-id\tcorpus-id\tscore\nq1\td1\t1099511627776\n",
                                             needle=lambda e, r, q: f"{q}:2:"),
    "qrels-grade-below-int32": evaluate_with(qrels="q1\td1\t1\nq1\td2\t-1099511627776\n",
                                             needle=lambda e, r, q: f"{q}:2:"),
    "qrels-empty-id-after-strip": evaluate_with(qrels="query-id\tcorpus-id\tscore\nq1\t  \t1\n",
                                                needle=lambda e, r, q: f"{q}:2:"),
    "search-qrels-grade-out-of-range": search_with(extra=("--qrels", "QRELS"), needle=lambda e, q: "QRELS:1:"),
    "queries-lone-surrogate-id": search_with(queries=TOY_QUERY + '{"_id": "q\\ud800", "text": "x"}\n',
                                             needle=lambda e, q: f"{q}:2:"),
    "corpus-lone-surrogate-id": index_with(corpus=CORPUS + '{"_id": "\\udc80", "text": "x"}\n',
                                           needle=lambda e, c, o: f"{c}:2:"),
    "corpus-blank-id": index_with(corpus=CORPUS + '{"_id": "   ", "text": "x"}\n', needle=lambda e, c, o: f"{c}:2:"),
    "yaml-duplicate-key": evaluate_with(extra=("--config", "CFG:metrics: [map]\nks: [1]\nmetrics: [ndcg@10]\n"),
                                        needle=lambda e, r, q: f"{e.tmp / 'cfg.yaml'}:3:"),
    "yaml-duplicate-nested-key": pipeline_with(
        cfg_text="data: {root: ../x}\nmining:\n  depth: 10\n  depth: 20\n", needle="CONFIG:4:"),
    "yaml-duplicate-section": pipeline_with(
        cfg_text="student: {model: BERT}\nteacher: {model: BERT}\nstudent: {epochs: 2}\n", needle="CONFIG:3:"),
    "index-yaml-duplicate-bm25-key": index_with(extra=("--config", "CFG:bm25:\n  k1: 0.9\n  k1: 1.2\n"),
                                                needle=lambda e, c, o: f"{e.tmp / 'cfg.yaml'}:3:"),
    "bm25-k1-negative": index_with(extra=("--set", "bm25.k1=-5"), needle=lambda e, c, o: "bm25.k1"),
    "bm25-k1-nan": index_with(extra=("--set", "bm25.k1=nan"), needle=lambda e, c, o: "bm25.k1"),
    "bm25-k1-inf-in-config": index_with(extra=("--config", "CFG:bm25: {k1: .inf}\n"),
                                        needle=lambda e, c, o: "bm25.k1"),
    "bm25-b-above-one": index_with(extra=("--set", "bm25.b=1.5"), needle=lambda e, c, o: "bm25.b"),
    "bm25-unknown-method": index_with(extra=("--set", "bm25.method=bm99"), needle=lambda e, c, o: "bm25.method"),
    "queries-file-empty": search_with(queries="", needle=lambda e, q: str(q)),
    "queries-file-blank-lines": search_with(queries="\n  \n\n", needle=lambda e, q: str(q)),
    "corpus-file-empty": index_with(corpus="", needle=lambda e, c, o: str(c)),
    "metrics-empty-list": evaluate_with(extra=("--set", "metrics=[]"), needle=lambda e, r, q: "metrics"),
    "metrics-unknown-name": evaluate_with(extra=("--set", "metrics=[ndcg@0]"), needle=lambda e, r, q: "metrics"),
    "set-k-sexagesimal": search_with(extra=("--set", "k=1:30"), needle=lambda e, q: "'k'"),
    "run-file-empty": evaluate_with(run="", needle=lambda e, r, q: f"{r}: no ranked documents"),
    "run-file-blank-lines": evaluate_with(run="\n \r\n", needle=lambda e, r, q: f"{r}: no ranked documents"),
}

DESTROYED = {
    "rebuild-unknown-stemmer-keeps-index": index_with(rebuild=True, extra=("--set", "bm25.stemmer=klingon"),
                                                      needle=lambda e, c, o: "bm25.stemmer"),
    "rebuild-empty-corpus-keeps-index": index_with(corpus="", rebuild=True),
    "rebuild-malformed-corpus-keeps-index": index_with(corpus=CORPUS + '{"_id": "d2", "te\n', rebuild=True,
                                                       needle=lambda e, c, o: f"{c}:2:"),
    "rebuild-bad-factory-keeps-index": index_with(rebuild=True, extra=("--kind", "dense", "--model", "BERT",
                                                                       "--factory", "Bogus42"),
                                                  needle=lambda e, c, o: "factory"),
    "rebuild-bad-model-path-keeps-index": index_with(rebuild=True, extra=("--kind", "dense", "--model", "no/such/dir"),
                                                     needle=lambda e, c, o: "--model: folder not found: no/such/dir"),
    "rebuild-k1-zero-keeps-index": index_with(rebuild=True, extra=("--set", "bm25.k1=0"),
                                              needle=lambda e, c, o: "bm25.k1"),
    "dense-max-length-too-long": index_with(extra=("--kind", "dense", "--model", "BERT", "--max-length", "100000"),
                                            needle=lambda e, c, o: "max_length"),
    "dense-factory-too-many-lists": index_with(extra=("--kind", "dense", "--model", "BERT", "--factory", "IVF64,Flat"),
                                               needle=lambda e, c, o: "factory"),
    "search-out-is-queries": search_with(out=lambda env: str(env.tmp / "queries.jsonl"), queries=TOY_QUERY,
                                         needle=lambda e, q: "--queries"),
    "search-out-is-qrels": search_with(out=lambda env: str(_qrels(env)), extra=("--qrels", "QRELS_GOOD"),
                                       needle=lambda e, q: "--qrels"),
    "search-out-inside-the-index": search_with(index=_own_index, out=lambda env: str(env.tmp / "idx" / "densekd_index.json"),
                                               needle=lambda e, q: "--out is inside the input --index"),
    "evaluate-out-is-run": evaluate_with(extra=("--out", "RUN"), needle=lambda e, r, q: "--run"),
    "evaluate-out-is-qrels": evaluate_with(extra=("--out", "QRELS_GOOD"), needle=lambda e, r, q: "--qrels"),
    "index-out-is-corpus": index_with(corpus=CORPUS, out=lambda env: str(env.tmp / "corpus.jsonl"),
                                      needle=lambda e, c, o: "--corpus"),
    "index-out-holds-corpus": index_with(corpus=CORPUS, out=lambda env: str(env.tmp),
                                         needle=lambda e, c, o: "--corpus"),
    "index-out-is-a-folder-of-user-files": index_with(out=lambda env: str(_user_folder(env)),
                                                      needle=lambda e, c, o: f"{o}: --out is a folder that holds files"),
}


def _user_folder(env: Env) -> Path:
    folder = env.tmp / "my-notes"
    folder.mkdir()
    _text(folder / "thesis.txt", "months of work")
    return folder


def _write_manifest(text: str) -> Callable[[Env], Path]:
    def make(env: Env) -> Path:
        root = _own_index(env)
        _text(root / "densekd_index.json", text)
        return root
    return make


TRACEBACKS = {
    "index-model-mistyped": index_with(extra=("--kind", "dense", "--model", "runs/studnt/final"),
                                       needle=lambda e, c, o: "--model: folder not found: runs/studnt/final"),
    "index-model-is-a-file": index_with(corpus=CORPUS, extra=("--kind", "dense", "--model", "CORPUS"),
                                        needle=lambda e, c, o: "--model: not a folder"),
    "search-model-mistyped": search_with(extra=("--model", "runs/nope"), needle=lambda e, q: "--model"),
    "pipeline-teacher-model-mistyped": pipeline_with(("teacher.model=runs/no-teacher",), needle="teacher.model"),
    "pipeline-student-model-mistyped": pipeline_with(("student.model=runs/no-student",), needle="student.model"),
    "manifest-json-list": search_with(index=_write_manifest("[1, 2]"), needle=lambda e, q: "densekd_index.json"),
    "manifest-truncated": search_with(index=_write_manifest('{"kind": "bm'), needle=lambda e, q: "densekd_index.json"),
    "manifest-no-kind": search_with(index=_write_manifest('{"corpus": "c"}'), needle=lambda e, q: "densekd_index.json"),
    "manifest-model-not-a-path": search_with(index=_write_manifest('{"kind": "dense", "model": 7}'),
                                             needle=lambda e, q: "densekd_index.json"),
    "search-out-empty": search_with(out=lambda env: "", needle=lambda e, q: "--out"),
    "evaluate-out-empty": evaluate_with(extra=("--out", ""), needle=lambda e, r, q: "--out"),
    "index-out-empty": index_with(out=lambda env: "", needle=lambda e, c, o: "--out"),
    "search-out-under-a-file": search_with(out=lambda env: str(_run(env) / "x.trec"), needle=lambda e, q: "--out"),
    "index-out-under-a-file": index_with(out=lambda env: str(_run(env) / "idx"), needle=lambda e, c, o: "--out"),
    "evaluate-out-under-a-file": evaluate_with(extra=("--out", "RUN/x.json"), needle=lambda e, r, q: "--out"),
    "search-out-onto-a-folder": search_with(out=lambda env: str(env.tmp), needle=lambda e, q: "is a folder"),
    "evaluate-out-onto-a-folder": evaluate_with(extra=("--out", "TMP"), needle=lambda e, r, q: "is a folder"),
    "index-out-onto-a-file": index_with(out=lambda env: str(_run(env)), needle=lambda e, c, o: "is a file"),
    "pipeline-output-dir-under-a-file": pipeline_with(("output_dir=RUNFILE/out",), needle="key 'output_dir'"),
    "pipeline-cache-dir-empty": pipeline_with(("cache_dir=' '",), needle="key 'cache_dir'"),
    "search-out-name-too-long": search_with(out=lambda env: str(env.tmp / ("x" * 300)), needle=lambda e, q: "too long"),
    "search-out-in-read-only-folder": search_with(out=lambda env: str(_read_only(env) / "run.trec"),
                                                  needle=lambda e, q: "permission denied"),
}


def _read_only(env: Env) -> Path:
    folder = env.tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


NUMBERS = {
    "student-epochs-nan": pipeline_with(("student.epochs=nan",), needle="student.epochs"),
    "student-batch-size-zero": pipeline_with(("student.batch_size=0",), needle="student.batch_size"),
    "student-learning-rate-negative": pipeline_with(("student.learning_rate=-2e-5",), needle="student.learning_rate"),
    "student-max-steps-zero": pipeline_with(("student.max_steps=0",), needle="student.max_steps"),
    "mining-rank-range-empty": pipeline_with(("mining.rank_range=[]",), needle="mining.rank_range"),
    "mining-rank-range-reversed": pipeline_with(("mining.rank_range=[30, 10]",), needle="mining.rank_range"),
    "mining-depth-zero": pipeline_with(("mining.depth=0",), needle="mining.depth"),
    "teacher-warmup-ratio-above-one": pipeline_with(("teacher.warmup_ratio=1.5",), needle="teacher.warmup_ratio"),
    # 1.0 reaches transformers as warmup_steps=1.0, a count of one step, not "warm up throughout"
    "student-warmup-ratio-one": pipeline_with(("student.warmup_ratio=1.0",), needle="student.warmup_ratio"),
    "teacher-fusion-negative-weight": pipeline_with(("teacher.fusion={cross_encoder: -1.0}",),
                                                    needle="teacher.fusion"),
    "teacher-epochs-inf-in-file": pipeline_with(cfg_update={"teacher": {"epochs": float("inf")}},
                                                needle="teacher.epochs"),
    "encode-batch-size-zero-in-file": pipeline_with(cfg_update={"encode_batch_size": 0},
                                                    needle="CONFIG: key 'encode_batch_size'"),
    "student-group-size-one": pipeline_with(("student.group_size=1",), needle="student.group_size"),
    "teacher-label-dense-one-fold": pipeline_with(("teacher.label_dense.folds=1",), needle="teacher.label_dense.folds"),
    "teacher-label-dense-no-seeds": pipeline_with(("teacher.label_dense.seeds=[]",), needle="teacher.label_dense.seeds"),
    "teacher-label-dense-repeated-seed": pipeline_with(("teacher.label_dense.seeds=[1, 1]",),
                                                       needle="teacher.label_dense.seeds"),
    "teacher-positive-margin-negative": pipeline_with(("teacher.positive_margin=-1",), needle="teacher.positive_margin"),
    "data-pseudo-queries-negative": pipeline_with(("data.pseudo_queries=-5",), needle="data.pseudo_queries"),
    "mining-retrieval-unknown": pipeline_with(("mining.retrieval=colbert",), needle="mining.retrieval"),
    "teacher-score-batch-size-zero": pipeline_with(("teacher.score_batch_size=0",), needle="teacher.score_batch_size"),
    "self-paced-fraction-nan": pipeline_with(("student.self_paced.end_fraction=.nan",),
                                             needle="student.self_paced.end_fraction"),
    "search-k-zero": search_with(extra=("-k", "0"), needle=lambda e, q: "k"),
    "index-batch-size-zero": index_with(extra=("--batch-size", "0"), needle=lambda e, c, o: "batch_size"),
}

CASES: dict[str, Case] = {**{f"silent/{k}": v for k, v in SILENT_WRONG.items()},
                          **{f"destroy/{k}": v for k, v in DESTROYED.items()},
                          **{f"traceback/{k}": v for k, v in TRACEBACKS.items()},
                          **{f"numbers/{k}": v for k, v in NUMBERS.items()}}


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` -> (content hash or "dir", mode): what a bad input must not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (digest, st.st_mode)
    return out


def _substitute(argv: list[str], env: Env) -> list[str]:
    """Fill the placeholders of a case's argv (files it needs that only exist once the case runs)."""
    subs = {"RUN": lambda: str(env.tmp / "run.trec"), "QRELS": lambda: str(_qrels(env, "q1\td1\t4294967296\n")),
            "QRELS_GOOD": lambda: str(env.tmp / "qrels.tsv"), "TMP": lambda: str(env.tmp),
            "CORPUS": lambda: str(env.tmp / "corpus.jsonl")}
    out = []
    for arg in argv:
        if arg.startswith("CFG:"):
            arg = str(_text(env.tmp / "cfg.yaml", arg[4:]))
        head, sep, tail = arg.partition("/")
        if head in subs:
            arg = subs[head]() + sep + tail
        out.append(arg)
    return out


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory, toy_beir_dir) -> Path:
    out = tmp_path_factory.mktemp("bm25") / "idx"
    assert main(["index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, tmp_path, toy_beir_dir, tiny_bert_path, bm25_index,
                                                          capsys):
    if name.endswith("read-only-folder") and os.geteuid() == 0:
        pytest.skip("root can write in a read-only folder")
    env = Env(tmp_path, toy_beir_dir, tiny_bert_path, bm25_index)
    argv, needle = CASES[name](env)
    argv = _substitute(argv, env)
    needle = needle.replace("QRELS", str(env.tmp / "qrels.tsv"))
    before = _snapshot(tmp_path)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and "%|" not in x]  # progress bars aside
    assert status == 2, f"status {status}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("densekd: error: "), err
    assert needle in lines[0], f"expected {needle!r} in {lines[0]!r}"
    assert _snapshot(tmp_path) == before, "a file was written, changed or deleted"


def test_a_start_model_inside_output_dir_is_refused_before_anything_is_replaced(tmp_path, toy_beir_dir,
                                                                                tiny_bert_path, capsys):
    """Continuing from runs/a/student/model with output_dir runs/a would delete the start model when the
    student step replaces its folder: refused up front, naming both keys, with nothing touched."""
    model = tmp_path / "out" / "student" / "model"
    shutil.copytree(tiny_bert_path, model)
    cfg = _text(tmp_path / "pipe.yaml", yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "data": {"root": str(toy_beir_dir)},
        "teacher": {"model": tiny_bert_path}, "student": {"model": str(model)}}))
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densekd: error: ") and "key 'output_dir' holds the input key 'student.model'" in err, err
    assert _snapshot(tmp_path) == before
