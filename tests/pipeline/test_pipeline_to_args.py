"""Each pipeline section builds its trainer's arguments (``to_args``) exactly as the steps once did by hand."""

from __future__ import annotations

from densekd.pipeline.config import StudentSection, TeacherSection
from densekd.pipeline.fidkd_config import ReaderSection, RetrieverSection
from densekd.training.config import DistillConfig
from densekd.training.reader_config import ReaderConfig
from densekd.training.teacher_config import TeacherConfig


def _saving(save_steps, checkpoints):
    if save_steps > 0:
        return {"output_dir": str(checkpoints), "save_strategy": "steps", "save_steps": save_steps,
                "save_total_limit": 1}
    return {"output_dir": str(checkpoints), "save_strategy": "no"}


def test_teacher_and_student_sections(tmp_path):
    t = TeacherSection(epochs=3.0, max_steps=7, learning_rate=1e-5, warmup_ratio=0.2, batch_size=4, group_size=4,
                       max_length=64, loss="pointwise", seed=3, save_steps=5)
    expected = TeacherConfig(
        num_train_epochs=t.epochs, max_steps=t.max_steps, learning_rate=t.learning_rate, warmup_steps=t.warmup_ratio,
        per_device_train_batch_size=t.batch_size, group_size=t.group_size, max_length=t.max_length, loss=t.loss,
        seed=t.seed, lr_scheduler_type="linear", **_saving(t.save_steps, tmp_path))
    assert t.to_args(tmp_path).to_dict() == expected.to_dict()

    s = StudentSection(train_mode="query_only", loss={"contrastive": {}}, group_size=3, batch_size=2, epochs=2.0,
                       max_steps=9, learning_rate=3e-5, warmup_ratio=0.0, seed=1, logging_steps=2, save_steps=0)
    expected = DistillConfig(
        per_device_train_batch_size=s.batch_size, num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.learning_rate, warmup_steps=s.warmup_ratio, seed=s.seed, group_size=s.group_size,
        loss=s.loss, train_mode=s.train_mode, logging_steps=s.logging_steps, lr_scheduler_type="linear",
        **_saving(s.save_steps, tmp_path))
    assert s.to_args(tmp_path).to_dict() == expected.to_dict()


def test_reader_and_retriever_sections(tmp_path):
    rc = ReaderSection(model="some/reader", passage_max_length=64, answer_max_length=8, decoder_layers=1,
                       freeze_encoder=True, epochs=2.0, max_steps=4, batch_size=3, gradient_accumulation_steps=2,
                       learning_rate=2e-4, warmup_ratio=0.05, seed=5, save_steps=2)
    expected = ReaderConfig(
        model_name_or_path=rc.model, n_passages=6, passage_max_length=rc.passage_max_length,
        answer_max_length=rc.answer_max_length, decoder_layers=rc.decoder_layers, freeze_encoder=rc.freeze_encoder,
        num_train_epochs=rc.epochs, max_steps=rc.max_steps, per_device_train_batch_size=rc.batch_size,
        gradient_accumulation_steps=rc.gradient_accumulation_steps, learning_rate=rc.learning_rate,
        warmup_steps=rc.warmup_ratio, seed=rc.seed, lr_scheduler_type="linear", **_saving(rc.save_steps, tmp_path))
    assert rc.to_args(6, tmp_path).to_dict() == expected.to_dict()

    s = RetrieverSection(batch_size=16, epochs=1.0, max_steps=3, learning_rate=1e-5, seed=2, logging_steps=1)
    for n_groups, batch in ((3, 3), (40, 16)):  # never a batch larger than the groups (drop_last)
        expected = DistillConfig(
            per_device_train_batch_size=batch, num_train_epochs=s.epochs, max_steps=s.max_steps,
            learning_rate=s.learning_rate, warmup_steps=s.warmup_ratio, seed=s.seed, group_size=6, loss=s.loss,
            negative_sampling="top", train_mode=s.train_mode, logging_steps=s.logging_steps,
            lr_scheduler_type="linear", **_saving(s.save_steps, tmp_path))
        assert s.to_args(6, n_groups, tmp_path).to_dict() == expected.to_dict()
