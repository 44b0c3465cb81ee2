"""Kill -9 during training: a real ``densekd train`` / ``train-teacher`` subprocess is SIGKILLed after it
wrote a checkpoint; rerunning the same command resumes from that checkpoint (fewer optimizer steps) and
ends with the weights of an uninterrupted run (dropout on: the RNG states are restored too)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from transformers import Trainer

from densekd.cli.main import main
from densekd.pipeline.cache import MARKER
from test_robust_kill import _kill_when

STEPS = 6       # optimizer steps of the trainings under test (batch 2 of 5 queries: 2 per epoch, 3 epochs)
SAVE_STEPS = 2
DELAY = "0.6"   # seconds of sleep per step in the killed worker


def _config(root: Path, cache: Path, toy_beir_dir: Path, model: str, teacher_steps: int) -> Path:
    cfg = {
        "name": "toy", "output_dir": str(root / "out"), "cache_dir": str(cache), "encode_batch_size": 4,
        "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top"},
        # large learning rates: a resume that got the dropout RNG or the data order wrong moves the weights
        # by far more than the tolerance (with the defaults a lost RNG state can stay below it)
        "teacher": {"model": model, "max_steps": teacher_steps, "batch_size": 2, "group_size": 3, "max_length": 32,
                    "rerank_depth": 4, "learning_rate": 1e-3, "save_steps": SAVE_STEPS},
        "student": {"model": model, "max_steps": STEPS, "batch_size": 2, "group_size": 3, "passage_max_length": 32,
                    "query_max_length": 16, "logging_steps": 1, "learning_rate": 1e-3, "save_steps": SAVE_STEPS},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _checkpoint_written(folder: Path):
    """True once a complete checkpoint (its trainer_state.json, written last, parses) is under ``folder``."""
    def ready() -> bool:
        for state in folder.glob("*/checkpoint-*/trainer_state.json"):
            try:
                json.loads(state.read_text())
                return True
            except ValueError:
                pass
        return False
    return ready


@pytest.fixture
def count_steps(monkeypatch):
    """Count the optimizer steps (= training_step calls, no accumulation) taken in this process."""
    calls = []
    step = Trainer.training_step

    def counted(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", counted)
    return calls


def _weights(folder: Path) -> dict:
    files = sorted(folder.rglob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {f"{f.relative_to(folder)}:{k}": v for f in files for k, v in load_file(f).items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst < 1e-5, worst


def _resumed_step(caplog, step: str) -> int:
    found = [int(m.group(1)) for r in caplog.records
             if (m := re.search(rf"^{step}: resuming training from checkpoint-(\d+)$", r.getMessage()))]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def test_student_training_resumes_after_sigkill(tmp_path, toy_beir_dir, tiny_bert_path, count_steps, caplog):
    cache = tmp_path / "cache"
    cfg = _config(tmp_path / "killed", cache, toy_beir_dir, tiny_bert_path, teacher_steps=2)
    assert main(["annotate", str(cfg)]) == 0  # upstream steps cached: the worker goes straight to the student
    count_steps.clear()
    checkpoints = tmp_path / "killed" / "out" / "checkpoints" / "student"
    _kill_when(["train", "train", str(cfg), DELAY], _checkpoint_written(checkpoints))
    student = tmp_path / "killed" / "out" / "student"
    assert not (student / MARKER).exists()  # the unfinished step is not taken as complete

    caplog.set_level(logging.INFO, logger="densekd.pipeline.steps")
    assert main(["train", str(cfg)]) == 0
    resumed_at = _resumed_step(caplog, "student")
    assert 0 < resumed_at < STEPS and resumed_at % SAVE_STEPS == 0
    assert count_steps == ["DistillTrainer"] * (STEPS - resumed_at)  # fewer steps than a full run
    marker = json.loads((student / MARKER).read_text())
    assert marker["summary"]["steps"] == STEPS and marker["summary"]["resumed_from"] == f"checkpoint-{resumed_at}"
    assert not checkpoints.exists()  # dropped once the step is complete
    history = json.loads((student / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, STEPS + 1))  # the killed run's log kept

    # an uninterrupted run (same cache: same teacher scores; another output_dir) ends with the same weights
    count_steps.clear()
    clean = _config(tmp_path / "clean", cache, toy_beir_dir, tiny_bert_path, teacher_steps=2)
    assert main(["train", str(clean)]) == 0
    assert count_steps == ["DistillTrainer"] * STEPS
    _assert_same_weights(student / "model", tmp_path / "clean" / "out" / "student" / "model")


def test_teacher_training_resumes_after_sigkill(tmp_path, toy_beir_dir, tiny_bert_path, count_steps, caplog):
    cfg = _config(tmp_path / "killed", tmp_path / "killed" / "cache", toy_beir_dir, tiny_bert_path, STEPS)
    checkpoints = tmp_path / "killed" / "cache" / "checkpoints" / "teacher"
    _kill_when(["train", "train-teacher", str(cfg), DELAY], _checkpoint_written(checkpoints))
    (folder,) = (tmp_path / "killed" / "cache" / "teacher").iterdir()
    assert not (folder / MARKER).exists()

    caplog.set_level(logging.INFO, logger="densekd.pipeline.steps")
    assert main(["train-teacher", str(cfg)]) == 0
    resumed_at = _resumed_step(caplog, "teacher")
    assert 0 < resumed_at < STEPS
    assert count_steps == ["CrossEncoderTrainer"] * (STEPS - resumed_at)
    assert json.loads((folder / MARKER).read_text())["summary"]["resumed_from"] == f"checkpoint-{resumed_at}"
    assert not checkpoints.exists()

    count_steps.clear()
    clean = _config(tmp_path / "clean", tmp_path / "clean" / "cache", toy_beir_dir, tiny_bert_path, STEPS)
    assert main(["train-teacher", str(clean)]) == 0
    assert count_steps == ["CrossEncoderTrainer"] * STEPS
    (clean_folder,) = (tmp_path / "clean" / "cache" / "teacher").iterdir()
    assert clean_folder.name == folder.name  # same key: save_steps and the kill change nothing
    _assert_same_weights(folder, clean_folder)


def test_save_steps_is_not_part_of_the_cache_keys():
    import dataclasses

    from densekd.pipeline.config import StudentSection
    from densekd.pipeline.run import _student_settings
    from densekd.pipeline.steps import TEACHER_TRAINING_FIELDS

    student = StudentSection()
    assert _student_settings(dataclasses.replace(student, save_steps=7)) == _student_settings(student)
    assert "save_steps" not in _student_settings(student) and "save_steps" not in TEACHER_TRAINING_FIELDS
