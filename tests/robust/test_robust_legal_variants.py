"""Legal variants of the inputs give exactly the results of the plain files; output folders are
published atomically (simultaneous writers, failed rebuilds) with ordinary permissions.

Variants: a UTF-8 byte-order mark, CRLF line ends, a missing qrels header, ids with surrounding
whitespace (a spreadsheet export), integer ids, null titles, tab-separated run files, very long
passages, and a leading-zero number given as ``-k 010``, ``--set k=010`` or ``k: 010`` in a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densekd.cli.main import main
from densekd.data.beir import load_corpus, load_qrels
from densekd.data.trec import load_run
from densekd.index._storage import atomic_dir

RUN = "q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\nq2 Q0 d2 1 3.0 t\nq2 Q0 d3 2 1.0 t\n"
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n"
BOM = "\ufeff"


def _evaluate(tmp: Path, run: str | bytes, qrels: str | bytes, name: str, capsys) -> dict:
    run_path, qrels_path, out = tmp / f"{name}.trec", tmp / f"{name}.tsv", tmp / f"{name}.json"
    for path, text in ((run_path, run), (qrels_path, qrels)):
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    assert main(["evaluate", "--run", str(run_path), "--qrels", str(qrels_path), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    return json.loads(out.read_text())


VARIANTS = {
    "bom-in-qrels": (RUN, BOM + QRELS),
    "bom-in-run": (BOM + RUN, QRELS),
    "bom-in-headerless-qrels": (RUN, BOM + QRELS.split("\n", 1)[1]),
    "crlf-everywhere": (RUN.replace("\n", "\r\n"), QRELS.replace("\n", "\r\n")),
    "no-qrels-header": (RUN, QRELS.split("\n", 1)[1]),
    "trailing-spaces-in-qrels-ids": (RUN, QRELS.replace("\td1\t", "\td1 \t").replace("q2\t", "q2  \t")),
    "tab-separated-run": (RUN.replace(" ", "\t"), QRELS),
    "spreadsheet-export": (RUN.replace("\n", "\r\n"), BOM + QRELS.replace("\t1\n", " \t1\r\n")),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_legal_variants_give_identical_metrics(name, tmp_path, capsys):
    plain = _evaluate(tmp_path, RUN, QRELS, "plain", capsys)
    assert plain["ndcg@10"] > 0.5  # the reference itself is meaningful
    run, qrels = VARIANTS[name]
    assert _evaluate(tmp_path, run, qrels, "variant", capsys) == plain


def test_loaders_normalise_ids_the_same_way(tmp_path):
    (tmp_path / "q.tsv").write_text(BOM + "query-id\tcorpus-id\tscore\n q1 \t d1\t1\n")
    (tmp_path / "r.trec").write_text(BOM + "q1 Q0 d1 1 1.0 t\n")
    assert load_qrels(tmp_path / "q.tsv") == {"q1": {"d1": 1}}
    assert load_run(tmp_path / "r.trec") == {"q1": {"d1": 1.0}}


def _search(tmp: Path, corpus_text: str, name: str, *extra: str) -> str:
    corpus = tmp / f"{name}.jsonl"
    corpus.write_text(corpus_text, encoding="utf-8")
    queries = tmp / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "aspirin heart"}\n{"_id": 2, "text": "paris"}\n')
    idx, run = tmp / f"{name}-idx", tmp / f"{name}.trec"
    assert main(["index", "--corpus", str(corpus), "--out", str(idx)]) == 0
    assert main(["search", "--index", str(idx), "--queries", str(queries), "--out", str(run), *extra]) == 0
    return run.read_text()


def test_corpus_variants_give_identical_runs(tmp_path):
    plain = ('{"_id": "1", "title": "", "text": "aspirin lowers heart risk"}\n'
             '{"_id": "d2", "title": "Paris", "text": "the capital of france"}\n')
    variant = (BOM + '{"_id": 1, "title": null, "text": "aspirin lowers heart risk"}\r\n'
               '{"_id": " d2 ", "title": "Paris", "text": "the capital of france"}\r\n')
    reference = _search(tmp_path, plain, "plain")
    assert "q1 Q0 1 1" in reference and "2 Q0 d2 1" in reference
    assert _search(tmp_path, variant, "variant") == reference


def test_leading_zero_numbers_mean_the_same_everywhere(tmp_path):
    cfg = tmp_path / "search.yaml"
    cfg.write_text("k: 010\n")
    long_corpus = "".join(f'{{"_id": "d{i}", "text": "aspirin heart {i}"}}\n' for i in range(20))
    flag = _search(tmp_path, long_corpus, "flag", "-k", "010")
    assert len(flag.splitlines()) == 10  # 10, not octal 8
    assert _search(tmp_path, long_corpus, "set", "--set", "k=010") == flag
    assert _search(tmp_path, long_corpus, "file", "--config", str(cfg)) == flag


def test_very_long_passages_index_and_search(tmp_path, tiny_bert_path):
    words = " ".join(f"word{i % 997}" for i in range(50_000))
    corpus = tmp_path / "long.jsonl"
    corpus.write_text(json.dumps({"_id": "long", "text": "aspirin " + words}) + "\n"
                      + json.dumps({"_id": "short", "text": "paris france"}) + "\n")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "q1", "text": "aspirin"}\n')
    for kind in ("bm25", "dense"):
        idx, run = tmp_path / f"idx-{kind}", tmp_path / f"{kind}.trec"
        assert main(["index", "--corpus", str(corpus), "--out", str(idx), "--kind", kind, "--model", tiny_bert_path,
                     "--max-length", "64"]) == 0
        assert main(["search", "--index", str(idx), "--queries", str(queries), "--out", str(run)]) == 0
        assert load_run(run)["q1"]  # a ranking came back
    assert next(iter(load_run(tmp_path / "bm25.trec")["q1"])) == "long"


# ---------------------------------------------------------------- atomic publish of output folders

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_block_leaves_the_old_folder_byte_identical(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    before = _tree(target)
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("build failed")
    assert _tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind


def test_index_folders_get_ordinary_permissions(tmp_path, toy_beir_dir):
    out = tmp_path / "idx"
    assert main(["index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for folder in (out, out / "bm25"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, oct(folder.stat().st_mode)


def test_simultaneous_writers_of_one_index_all_succeed(tmp_path, toy_beir_dir):
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "densekd.cli.main", "index", "--corpus", str(toy_beir_dir / "corpus.jsonl"),
           "--out", str(out), "--kind", "bm25"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for _ in range(3):
        procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
                 for _ in range(4)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        for status, err in results:
            assert status == 0 and "Traceback" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary or old folder left
        assert json.loads((out / "densekd_index.json").read_text())["passages"] == len(
            load_corpus(toy_beir_dir / "corpus.jsonl"))


def _publish_many(target: str, worker: int, times: int) -> str | None:
    try:
        for i in range(times):
            with atomic_dir(target) as tmp:
                (tmp / "who.txt").write_text(f"{worker}:{i}")
                (tmp / "sub").mkdir()
                (tmp / "sub" / "x").write_text("x" * 1000)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which asserts there was none
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_publish_is_atomic_under_many_racing_writers(tmp_path, monkeypatch, exchange):
    import multiprocessing

    from densekd.index import _storage

    if not exchange:  # the path taken on file systems without RENAME_EXCHANGE (forked workers inherit it)
        monkeypatch.setattr(_storage, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        errors = pool.starmap(_publish_many, [(str(target), w, 40) for w in range(4)])
    assert errors == [None] * 4
    assert (target / "who.txt").read_text().endswith(":39") and (target / "sub" / "x").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dense_rebuild_with_another_factory_reuses_the_vectors(tmp_path, toy_beir_dir, tiny_bert_path):
    out = tmp_path / "idx"
    base = ["index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(out), "--kind", "dense",
            "--model", tiny_bert_path]
    assert main(base) == 0
    vectors = _tree(out / "embeddings")
    assert main([*base, "--factory", "HNSW8"]) == 0
    assert json.loads((out / "densekd_index.json").read_text())["factory"] == "HNSW8"
    assert _tree(out / "embeddings") == vectors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the staging folder went into the index
