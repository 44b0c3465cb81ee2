"""Training the dual-encoder student: one cached, resumable step shared by every recipe.

:func:`train_student` distils a list of :class:`~densekd.data.types.TrainGroup` s into the student the
``student`` section describes (its loss may be labels-only, e.g. ``{"contrastive": {}}``: the ensemble
teacher's labels-only members are trained by this same step). The output folder ``ctx.out / "student"``
is reused when its ``DONE.json`` records the same key; checkpoints every ``student.save_steps`` go to
``output_dir/checkpoints/student/<key>/`` and a rerun resumes from the newest one
(:mod:`densekd.pipeline.checkpoints`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from densekd.data.types import Run, TrainGroup
from densekd.losses.combine import loss_kinds
from densekd.pipeline import steps
from densekd.pipeline.cache import cache_key, model_ref


#: losses that read only the labels (each group's positives and negatives), never ``teacher_scores``
LABELS_ONLY_LOSSES = {"contrastive"}


def train_student(ctx: steps.Context, groups: list[TrainGroup], store: Any) -> tuple[Path, dict[str, Any]]:
    """Distil the teacher's scores into the dual-encoder student (cached on its inputs' key).

    Checkpoints every ``student.save_steps`` go to ``output_dir/checkpoints/student/<key>/``; a rerun
    with the same key resumes from the newest one (module docstring).
    """
    import shutil

    from densekd.training.callbacks import RetrievalEvalCallback
    from densekd.training.dataset import TrainGroupDataset
    from densekd.training.trainer import DistillTrainer

    s = ctx.cfg.student
    settings = _student_settings(s)
    rows = [g.to_json() for g in groups]
    # no term reads teacher scores and no self-paced selector ranks by them: they are not an input
    if loss_kinds(s.loss) <= LABELS_ONLY_LOSSES and not s.self_paced.enabled:
        rows = [{k: v for k, v in row.items() if k != "teacher_scores"} for row in rows]
    # v2: in-batch copies of a query's positives are no longer its negatives (losses.batch.positive_repeats)
    key = cache_key("student-v2", settings, rows)
    folder = ctx.out / "student"
    checkpoints = steps.checkpoint_folder(ctx.out, "student", key)

    def compute(out: Path) -> dict[str, Any]:
        for stale in checkpoints.parent.glob("*"):  # one student per output_dir: other settings' leftovers
            if stale != checkpoints:
                shutil.rmtree(stale, ignore_errors=True)
        args = s.to_args(checkpoints)
        encoder = _build_student(s)
        dataset = TrainGroupDataset(groups, ctx.queries, ctx.corpus, group_size=s.group_size, seed=s.seed,
                                    extra_per_group=s.dark_examples.extra_per_group)
        callbacks = []
        if s.self_paced.enabled:
            from densekd.training.self_paced import SelfPacedDataset, SelfPacedLogCallback, SelfPacedSelector

            dataset = SelfPacedDataset(dataset, SelfPacedSelector(groups, s.self_paced.to_config()))
            callbacks.append(SelfPacedLogCallback(dataset))
        table = _passage_table(ctx, s, store, groups)
        if s.eval_steps:  # query_only: frozen vectors, or the token states a passage head reads
            frozen = (table if s.passage_head is not None else store) if s.train_mode == "query_only" else None
            callbacks.append(RetrievalEvalCallback(ctx.queries, ctx.corpus, ctx.eval_qrels,
                                                   every_n_steps=s.eval_steps, passage_embeddings=frozen))
        trainer = DistillTrainer(model=encoder, args=args, train_dataset=dataset, callbacks=callbacks,
                                 passage_embeddings=table)
        summary = steps.train_resumable(trainer, checkpoints, "student", out)
        encoder.save_pretrained(out / "model")
        n = summary.pop("steps_this_run") * s.batch_size  # this process's steps only
        return {**summary, "queries_per_s": round(n / summary["train_seconds"], 2)}

    summary = ctx.step("student", folder, compute, key, meta={"student": settings})
    steps.drop_checkpoints(checkpoints)  # the marker is written: they are no longer needed
    return folder / "model", summary


def _build_student(s: Any) -> Any:
    """The student model the section asks for, from its start checkpoint."""
    from densekd.encoders.dense import DenseEncoder

    lengths = {"query_max_length": s.query_max_length, "passage_max_length": s.passage_max_length}
    if s.architecture == "ernie":
        from densekd.encoders.ernie import ErnieSearchModel

        torch.manual_seed(s.seed)  # the ColBERT head is new: seed its initialisation
        head = {} if s.passage_head is None else {"passage_head": s.passage_head}
        return ErnieSearchModel.from_pretrained(s.model, colbert_dim=s.colbert_dim, **head, **lengths)
    if s.passage_head is not None:
        return DenseEncoder.from_pretrained(s.model, passage_head=s.passage_head, **lengths)  # a new head: zero
    return DenseEncoder.from_pretrained(s.model, **lengths)


def _passage_table(ctx: steps.Context, s: Any, store: Any, groups: list[TrainGroup]) -> Any:
    """The frozen passage side a ``query_only`` student reads (``None`` in full mode): the cached passage
    vectors ``store``, or for an ERNIE-Search student or one with a passage head the start model's cached
    token states (those heads read passage tokens; their pooled vectors are the same as ``store``'s), with
    the groups' dark examples' states stacked on when there are any."""
    if s.train_mode != "query_only":
        return None
    if s.architecture == "ernie" or s.passage_head is not None:
        states = steps.passage_token_states(ctx, s.model, s.passage_max_length, "student")
        return steps.query_only_states(ctx, groups, states, s.model, s.passage_max_length)
    return store


def _student_settings(s: Any) -> dict[str, Any]:
    """The student section as a dict, without the sections that are off or at their defaults: a run
    that does not use them keeps the cache key it had before they existed."""
    settings = asdict(s)
    del settings["save_steps"]  # where training may resume from does not change the model
    settings["model"] = model_ref(settings["model"])  # a local start model by its content, not its path alone
    for name in ("dark_examples", "self_paced"):
        if not settings[name]["enabled"]:
            del settings[name]
    if settings["architecture"] == "dense":
        del settings["architecture"], settings["colbert_dim"]
    if settings["passage_head"] is None:
        del settings["passage_head"], settings["head_learning_rate"]
    return settings


def student_dev_run(ctx: steps.Context, model_dir: Path, zero_shot_store: Any) -> Run:
    """The trained student's run on the evaluation queries (a ``query_only`` student searches the frozen
    zero-shot vectors, or its passage head's over the cached token states; a fully trained one
    re-encodes the corpus, cached)."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.index.passage_table import PassageEmbeddingTable

    encoder = DenseEncoder.from_pretrained(model_dir)
    s = ctx.cfg.student
    if s.train_mode == "query_only" and encoder.passage_head is not None:
        # frozen tower, trained head: the head over the base model's cached token states (seconds)
        states = steps.passage_token_states(ctx, s.model, s.passage_max_length, "student")
        vectors = encoder.encode_cached_passages(states, states.ids)
        return steps.dense_run(encoder, PassageEmbeddingTable(states.ids, vectors), ctx)
    if s.train_mode == "query_only":
        # the passage tower is frozen: the base model's cached corpus vectors are the student's
        store = zero_shot_store
    else:
        store = steps.corpus_embeddings(ctx, str(model_dir), ctx.cfg.student.passage_max_length, "student")
    return steps.dense_run(encoder, store, ctx)
