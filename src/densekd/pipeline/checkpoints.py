"""Resumable training for the pipelines: checkpoint folders, resume, timed training, cleanup.

Step folders are wiped while unfinished (a half-written output is never taken as complete), so training
checkpoints live *next to* them, in a folder named by the same cache key (:func:`checkpoint_folder`). A
rerun with the same key resumes from the newest complete checkpoint (:func:`resume_checkpoint`); the HF
Trainer restores optimizer, scheduler, RNG states and the data position, so the result equals an
uninterrupted run. ``save_steps`` is not part of any key. Used by the distillation pipeline's teacher and
student steps and by the reader -> retriever loop's reader and retriever steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from densekd.data.io import write_json

log = logging.getLogger("densekd.pipeline.steps")


def checkpoint_folder(root: Path, step: str, key: str) -> Path:
    """Where the training ``step`` with cache key ``key`` writes its checkpoints: ``root/checkpoints/step/key``.

    Outside the step's own folder, which :func:`~densekd.pipeline.cache.cached_step` wipes while it is
    unfinished; keyed like it, so only a rerun of the very same training resumes from them.
    """
    return root / "checkpoints" / step / key


def resume_checkpoint(folder: Path, step: str) -> str | None:
    """The newest complete HF ``checkpoint-N`` in ``folder`` (``None``: train from scratch).

    A checkpoint is complete once its ``trainer_state.json`` (written last by the Trainer) parses; an
    incomplete one (killed while saving) is deleted so the Trainer's rotation never keeps it.
    """
    complete: list[tuple[int, Path]] = []
    for ckpt in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        number = ckpt.name.rpartition("-")[2]
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: discarding incomplete checkpoint %s", step, ckpt.name)
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        if number.isdigit():
            complete.append((int(number), ckpt))
    if not complete:
        return None
    latest = max(complete)[1]
    log.info("%s: resuming training from %s", step, latest.name)
    return str(latest)


def train_resumable(trainer: Any, checkpoints: Path, step: str, out: Path) -> dict[str, Any]:
    """Run ``trainer.train()``, resuming from the newest complete checkpoint in ``checkpoints``, and
    write its ``log_history.json`` into ``out``.

    Returns the summary every pipeline training records: ``train_seconds`` (this process only),
    ``steps`` (the final global step), ``steps_this_run`` and, after a resume, ``resumed_from``.
    """
    quiet_loss_lines(trainer)
    resume = resume_checkpoint(checkpoints, step)
    done_before = int(Path(resume).name.rpartition("-")[2]) if resume else 0  # checkpoint-<global step>
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    write_json(out / "log_history.json", trainer.state.log_history)
    summary = {"train_seconds": round(seconds, 1), "steps": trainer.state.global_step,
               "steps_this_run": trainer.state.global_step - done_before}
    return {**summary, "resumed_from": Path(resume).name} if resume else summary


def quiet_loss_lines(trainer: Any) -> None:
    """Keep the Trainer's progress bar but not the loss dict it prints every ``logging_steps``, when the
    command line is quiet (it sets transformers' verbosity to ERROR unless ``--verbose``).

    Those lines were four fifths of a ``make run`` log; the same numbers are in ``log_history.json``
    and the report's training plot.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    if hf_logging.get_verbosity() < hf_logging.ERROR:
        return

    class BarOnly(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            pass

    # at ERROR verbosity the Trainer defaults to disable_tqdm, i.e. a PrinterCallback (log lines, no bar)
    removed = [trainer.pop_callback(cb) for cb in (ProgressCallback, PrinterCallback)]
    if any(cb is not None for cb in removed):
        trainer.add_callback(BarOnly())


def training_args(save_steps: int, checkpoints: Path) -> dict[str, Any]:
    """``TrainingArguments`` fields of a pipeline training: checkpoints every ``save_steps`` (0 = none)."""
    if save_steps > 0:
        return {"output_dir": str(checkpoints), "save_strategy": "steps", "save_steps": save_steps,
                "save_total_limit": 1}
    return {"output_dir": str(checkpoints), "save_strategy": "no"}


def section_training_args(section: Any, checkpoints: Path, **overrides: Any) -> dict[str, Any]:
    """The ``TrainingArguments`` fields every pipeline section sets the same way (each section's ``to_args``).

    ``section`` has ``epochs``, ``max_steps``, ``learning_rate``, ``warmup_ratio``, ``batch_size``,
    ``seed`` and ``save_steps``; the schedule is linear; ``overrides`` replace any field.
    """
    fields = {"num_train_epochs": section.epochs, "max_steps": section.max_steps,
              "learning_rate": section.learning_rate,
              "warmup_steps": section.warmup_ratio,  # warmup_steps < 1 is a ratio of all steps
              "per_device_train_batch_size": section.batch_size, "seed": section.seed,
              "lr_scheduler_type": "linear", **training_args(section.save_steps, checkpoints)}
    return {**fields, **overrides}


def drop_checkpoints(folder: Path) -> None:
    """Delete a finished training's checkpoint folder and its parents left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        try:
            parent.rmdir()
        except OSError:  # not empty (other trainings' checkpoints) or already gone
            break
