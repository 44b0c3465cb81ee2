"""Kill -9 resume: a real subprocess is SIGKILLed mid-job, then the job is rerun and must end exactly
as an uninterrupted run (encode_corpus, annotate) or leave no completion marker (pipeline cache)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from _robust_helpers import HERE, run_annotate, run_encode, run_index
from densekd.cli.main import main
from densekd.pipeline.cache import MARKER

HELPERS = HERE / "_robust_helpers.py"


def _kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 60.0) -> None:
    """Start the helper with ``args``, SIGKILL it as soon as ``ready()``; fail if it ends on its own."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(HELPERS), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"worker ended before the kill point: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.02)
        assert proc.poll() is None, "worker finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_encode_corpus_resumes_after_sigkill(tmp_path, toy_beir_dir):
    killed = tmp_path / "killed"
    _kill_when(["encode", str(toy_beir_dir), str(killed), "1.0"],
               lambda: (killed / "ids_00000.npy").is_file())
    assert not (killed / "manifest.json").exists()
    assert (killed / "encode_state.json").is_file()

    resumed = run_encode(toy_beir_dir, killed, delay=0.0)
    assert 0 < resumed.encoded < 8  # chunk 0 (at least) was reused, not re-encoded
    run_encode(toy_beir_dir, tmp_path / "clean", delay=0.0)
    assert _files(killed) == _files(tmp_path / "clean")  # manifest and every chunk byte-identical


def test_index_build_killed_leaves_no_index_and_rerun_equals_clean_build(tmp_path, toy_beir_dir):
    store = tmp_path / "store"
    run_encode(toy_beir_dir, store, delay=0.0)  # 4 chunks of 2 passages
    out = tmp_path / "index"
    _kill_when(["index", str(store), str(out), "2.0"], lambda: Path(f"{out}.added-2").is_file())
    # the index is saved only complete (built beside the target, renamed into place): nothing to mistake
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.")]  # nothing half-saved either

    run_index(store, out, delay=0.0)
    run_index(store, tmp_path / "clean", delay=0.0)
    assert _files(out) == _files(tmp_path / "clean")
    from densekd.index.faiss_index import FaissIndex

    assert len(FaissIndex.load(out)) == 8


def test_annotate_resumes_after_sigkill(tmp_path, toy_beir_dir):
    out = tmp_path / "killed" / "scores.jsonl"
    partial = Path(str(out) + ".partial")

    def one_group_written() -> bool:
        return partial.is_file() and partial.read_bytes().count(b"\n") >= 2  # header + one group

    _kill_when(["annotate", str(toy_beir_dir), str(out), "1.0"], one_group_written)
    assert not out.exists() and partial.is_file()

    resumed = run_annotate(toy_beir_dir, out, delay=0.0)
    clean = tmp_path / "clean" / "scores.jsonl"
    fresh = run_annotate(toy_beir_dir, clean, delay=0.0)
    assert 0 < resumed.scored < fresh.scored  # the killed run's groups were not scored again
    assert out.read_bytes() == clean.read_bytes()
    assert not partial.exists()


def _mine_config(tmp_path: Path, toy_beir_dir: Path, tiny_bert_path: str) -> Path:
    cfg = {
        "name": "toy", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top"},
        "teacher": {"model": tiny_bert_path}, "student": {"model": tiny_bert_path},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_mine_step_killed_leaves_no_marker_and_rerun_completes(tmp_path, toy_beir_dir, tiny_bert_path):
    cfg = _mine_config(tmp_path, toy_beir_dir, tiny_bert_path)
    mined = tmp_path / "cache" / "mined"
    _kill_when(["mine", str(cfg)], lambda: any(mined.glob("*/groups.jsonl")))

    (folder,) = mined.iterdir()
    assert (folder / "groups.jsonl").is_file() and not (folder / MARKER).exists()
    assert all((f / MARKER).is_file() for f in (tmp_path / "cache" / "bm25").iterdir())  # finished step kept

    assert main(["mine", str(cfg)]) == 0
    assert (folder / MARKER).is_file()
    marker = json.loads((folder / MARKER).read_text())
    groups = [json.loads(line) for line in (folder / "groups.jsonl").read_text().splitlines()]
    assert [g["qid"] for g in groups] == ["q1", "q2", "q3", "q4", "q5"]  # not the torn one-line leftover
    assert marker["summary"]

    # and it equals a run that was never interrupted
    other = tmp_path / "other"
    other.mkdir()
    assert main(["mine", str(_mine_config(other, toy_beir_dir, tiny_bert_path))]) == 0
    (clean,) = (other / "cache" / "mined").iterdir()
    assert clean.name == folder.name
    assert (clean / "groups.jsonl").read_bytes() == (folder / "groups.jsonl").read_bytes()
