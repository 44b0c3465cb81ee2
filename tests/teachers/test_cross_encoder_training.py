"""TeacherConfig validation and a few CrossEncoderTrainer steps on the toy set (tiny BERT, CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import set_seed

from densekd.data.beir import load_beir
from densekd.data.types import TrainGroup
from densekd.encoders.cross_encoder import CrossEncoder
from densekd.training.dataset import TrainGroupDataset
from densekd.training.teacher_config import TeacherConfig
from densekd.training.teacher_trainer import (LOSSES, TRAINING_ARGS_JSON, PairCollator, train_cross_encoder)


@pytest.fixture(scope="module")
def toy(toy_beir_dir):
    data = load_beir(toy_beir_dir, "train")
    groups = []
    for qid, rels in data.qrels.items():
        pos = [pid for pid, rel in rels.items() if rel > 0]
        groups.append(TrainGroup(qid, pos, [pid for pid in data.corpus if pid not in rels]))
    return data, groups


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, tiny_bert_path) -> str:
    """The tiny BERT without dropout: a random 2-layer model learns the toy set in ~15 steps then."""
    from transformers import AutoTokenizer, BertModel

    out = tmp_path_factory.mktemp("tiny_bert_no_dropout_ce")
    BertModel.from_pretrained(tiny_bert_path, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_path).save_pretrained(out)
    return str(out)


def _config(tmp_path, **overrides) -> TeacherConfig:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=5, num_train_epochs=15,
                    learning_rate=1e-2, warmup_steps=0, group_size=4, max_length=48, save_strategy="no",
                    logging_steps=1, negative_sampling="random", seed=0, use_cpu=True)
    return TeacherConfig(**{**settings, **overrides})


def _fixed_batch_loss(model: CrossEncoder, data, groups, loss: str) -> float:
    """The loss on every group's first 3 negatives (same candidates before and after training)."""
    ds = TrainGroupDataset(groups, data.queries, data.corpus, group_size=4, negative_sampling="top")
    batch = PairCollator.from_encoder(model)([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        return float(LOSSES[loss](model(batch["pairs"]).view(batch["mask"].shape), batch["mask"]))


def test_listwise_training_reduces_loss_and_ranks_positive_first(no_dropout_bert, toy, tmp_path):
    data, groups = toy
    config = _config(tmp_path, loss="listwise")
    set_seed(config.seed)  # the same head initialisation train_cross_encoder starts from
    before = _fixed_batch_loss(CrossEncoder.from_pretrained(no_dropout_bert, max_length=48), data, groups, "listwise")
    evals: list[int] = []

    def eval_fn(model: CrossEncoder) -> dict[str, float]:
        evals.append(1)
        return {"calls": float(len(evals))}

    model = train_cross_encoder(groups, data.queries, data.corpus, config, model_path=no_dropout_bert,
                                eval_fn=eval_fn)
    after = _fixed_batch_loss(model, data, groups, "listwise")
    assert after < 0.5 * before
    assert len(evals) == 15                                        # once per epoch
    query = data.queries["q1"].text
    scores = model.predict([(query, p.full_text()) for p in data.corpus.values()], show_progress=False)
    ranked = [pid for _, pid in sorted(zip(scores.tolist(), data.corpus), reverse=True)]
    assert ranked[0] == "d1"
    # the final model is saved as a loadable densekd folder with JSON (not pickled) arguments
    assert (tmp_path / TRAINING_ARGS_JSON).is_file()
    reloaded = CrossEncoder.from_pretrained(tmp_path)
    assert reloaded.max_length == 48
    torch.testing.assert_close(torch.from_numpy(reloaded.predict([(query, "x")], show_progress=False)),
                               torch.from_numpy(model.predict([(query, "x")], show_progress=False)))


def test_pointwise_training_reduces_loss(no_dropout_bert, toy, tmp_path):
    data, groups = toy
    config = _config(tmp_path, loss="pointwise", num_train_epochs=6)
    set_seed(config.seed)
    before = _fixed_batch_loss(CrossEncoder.from_pretrained(no_dropout_bert, max_length=48), data, groups, "pointwise")
    model = train_cross_encoder(groups, data.queries, data.corpus, config, model_path=no_dropout_bert)
    assert _fixed_batch_loss(model, data, groups, "pointwise") < 0.9 * before


def test_collator_is_group_major_and_masks_repeats(tiny_bert_path):
    ce = CrossEncoder.from_pretrained(tiny_bert_path, max_length=16)
    items = [{"query": "q one", "pids": ["p", "n", "n"], "passages": ["pos", "neg", "neg"]},
             {"query": "q two", "pids": ["p2", "m", "k"], "passages": ["pos2", "m", "k"]}]
    batch = PairCollator.from_encoder(ce)(items)
    assert batch["pairs"]["input_ids"].shape[0] == 6
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    first = ce.tokenizer.decode(batch["pairs"]["input_ids"][3], skip_special_tokens=True)
    assert first == "q two pos2"                                   # row i*G + j = candidate j of query i


@pytest.mark.parametrize("bad", [dict(loss="kl"), dict(group_size=1), dict(negative_sampling="hard"),
                                 dict(remove_unused_columns=True)])
def test_config_rejects_bad_values(tmp_path, bad):
    with pytest.raises(ValueError):
        _config(tmp_path, **bad)


def test_config_defaults(tmp_path):
    cfg = TeacherConfig(output_dir=str(tmp_path))
    assert (cfg.loss, cfg.group_size, cfg.max_length, cfg.negative_sampling) == ("listwise", 8, 256, "random")
    assert cfg.remove_unused_columns is False and cfg.report_to in ("none", [], ["none"])
    assert cfg.warmup_steps == 0.1 and cfg.lr_scheduler_type == "linear"
