"""DistillConfig: defaults for distillation, validation, CLI parsing of the loss spec."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from densekd.losses import build_loss
from densekd.training import DistillConfig, default_loss_spec


def test_defaults_suit_distillation(tmp_path):
    args = DistillConfig(output_dir=str(tmp_path))
    assert args.group_size == 8 and args.negative_sampling == "random" and args.train_mode == "full"
    assert args.use_in_batch_negatives and not args.remove_unused_columns and args.dataloader_drop_last
    assert args.loss == default_loss_spec() and set(build_loss(args.loss).weights) == {"kl", "contrastive"}
    assert '"group_size": 8' in args.to_json_string()


def test_cli_parses_a_json_loss_spec(tmp_path):
    (args,) = HfArgumentParser(DistillConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loss", '{"contrastive": {"weight": 1}}', "--train_mode", "query_only"])
    assert args.loss == {"contrastive": {"weight": 1}} and args.train_mode == "query_only"


@pytest.mark.parametrize("kw, match", [
    ({"group_size": 0}, "group_size"),
    ({"group_size": 1, "use_in_batch_negatives": False}, "no negatives"),
    ({"negative_sampling": "hardest"}, "negative_sampling"),
    ({"train_mode": "passage_only"}, "train_mode"),
    ({"loss": {"klx": {}}}, "unknown loss"),
    ({"loss": {"kl": {"temprature": 2}}}, "unknown option"),
    ({"remove_unused_columns": True}, "remove_unused_columns"),
    ({"dataloader_num_workers": 2, "dataloader_persistent_workers": True}, "persistent"),
    ({"eval_metrics": ["ndcg@x"]}, "eval_metrics"),
])
def test_validation_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(output_dir=str(tmp_path), **kw)


@pytest.mark.parametrize("name, value", [("eval_metrics", ["ndcg@10"]), ("eval_retrieval_steps", 100)])
def test_never_read_eval_fields_are_refused_with_advice(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"{name} is deprecated .*RetrievalEvalCallback"):
        DistillConfig(output_dir=str(tmp_path), **{name: value})


def test_every_config_shares_the_base_defaults_and_checks(tmp_path):
    from densekd.training.arguments import DensekdArguments
    from densekd.training.reader_config import ReaderConfig
    from densekd.training.teacher_config import TeacherConfig

    for config in (DistillConfig, TeacherConfig, ReaderConfig):
        args = config(output_dir=str(tmp_path))
        assert isinstance(args, DensekdArguments)
        assert (args.remove_unused_columns, args.prediction_loss_only, args.logging_steps) == (False, True, 10)
        with pytest.raises(ValueError, match="remove_unused_columns must be False"):
            config(output_dir=str(tmp_path), remove_unused_columns=True)
    for config in (DistillConfig, TeacherConfig):  # the epoch-seeded group samplers
        with pytest.raises(ValueError, match="persistent"):
            config(output_dir=str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=True)


def test_every_trainer_checkpoints_and_resumes_through_one_base(tiny_bert_path, tmp_path):
    from densekd.encoders.cross_encoder import CrossEncoder
    from densekd.training.checkpointing import CheckpointTrainer
    from densekd.training.reader_trainer import ReaderTrainer
    from densekd.training.teacher_config import TeacherConfig
    from densekd.training.teacher_trainer import CrossEncoderTrainer
    from densekd.training.trainer import DistillTrainer

    for trainer in (DistillTrainer, CrossEncoderTrainer, ReaderTrainer):
        assert issubclass(trainer, CheckpointTrainer) and trainer.checkpoint_marker
        assert "_save" not in vars(trainer) and "_load_from_checkpoint" not in vars(trainer)
    ce = CrossEncoder.from_pretrained(tiny_bert_path, max_length=16)
    trainer = CrossEncoderTrainer(ce, TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True))
    assert trainer.can_return_loss and not trainer.loss_is_scaled_for_ga
    with pytest.raises(ValueError, match="not a CrossEncoderTrainer checkpoint"):
        trainer._load_from_checkpoint(str(tmp_path))
