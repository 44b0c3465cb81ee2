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
