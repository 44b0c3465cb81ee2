"""Reader training: dataset answer sampling, collator, a few Trainer steps on a toy QA set."""

from __future__ import annotations

import json

import pytest
import torch

from densekd.encoders.reader import FiDReader
from densekd.training.reader_trainer import (
    TRAINING_ARGS_JSON,
    ReaderCollator,
    ReaderConfig,
    ReaderDataset,
    ReaderExample,
    ReaderTrainer,
    train_reader,
)

EXAMPLES = [
    ReaderExample("what is the capital of france", ["Paris"],
                  [("Paris", "Paris is the capital and largest city of France."), "Coffee is a drink."]),
    ReaderExample("who won super bowl 50", ["Denver Broncos", "Broncos"],
                  [("Denver Broncos", "The Denver Broncos won Super Bowl 50."), "Sleep matters."]),
    ("what causes lung cancer", ["smoking"], ["Smoking causes lung cancer and heart disease."]),
]


def _config(tmp_path, reader_dir: str, **overrides) -> ReaderConfig:
    settings = dict(output_dir=str(tmp_path / "reader"), model_name_or_path=reader_dir, max_steps=20,
                    per_device_train_batch_size=3, learning_rate=1e-2, warmup_steps=0, n_passages=2,
                    passage_max_length=40, answer_max_length=8, save_strategy="no", logging_steps=1, seed=0,
                    use_cpu=True)
    return ReaderConfig(**{**settings, **overrides})


def test_reader_dataset_answer_choice_is_seeded_and_rotates():
    ds = ReaderDataset(EXAMPLES, seed=3)
    assert len(ds) == 3 and ds[0] == {"question": EXAMPLES[0][0], "answer": "Paris", "passages": EXAMPLES[0][2]}
    draws = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        draws.append(ds[1]["answer"])
        fresh = ReaderDataset(EXAMPLES, seed=3)   # a pure function of (seed, epoch, idx)
        fresh.set_epoch(epoch)
        assert fresh[1]["answer"] == draws[-1]
    assert set(draws) == {"Denver Broncos", "Broncos"}
    with pytest.raises(ValueError, match="at least one answer"):
        ReaderDataset([("q", [], ["p"])])


def test_reader_collator_batches_texts(tiny_reader):
    ds = ReaderDataset(EXAMPLES)
    batch = ReaderCollator(tiny_reader.tokenize_fn)([ds[0], ds[2]])
    assert set(batch) == {"input_ids", "attention_mask", "passage_mask", "labels"}
    assert batch["passage_mask"].tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="empty"):
        ReaderCollator(tiny_reader.tokenize_fn)([])


@pytest.fixture(scope="module")
def no_dropout_reader_dir(tmp_path_factory, tiny_reader_dir) -> str:
    """The tiny reader without dropout, so a few steps visibly fit the toy set."""
    reader = FiDReader.from_pretrained(tiny_reader_dir)
    for module in reader.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for cfg in (reader.model.config.encoder, reader.model.config.decoder):
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    out = tmp_path_factory.mktemp("tiny_reader_no_dropout")
    reader.save_pretrained(out)
    return str(out)


def test_reader_training_steps_reduce_loss_and_save(tmp_path, no_dropout_reader_dir):
    questions = [ex[0] for ex in EXAMPLES]
    passages = [ex[2][:2] for ex in EXAMPLES]
    answers = [ex[1][0] for ex in EXAMPLES]
    start = FiDReader.from_pretrained(no_dropout_reader_dir, n_passages=2).eval()
    with torch.no_grad():
        before = start.loss(questions, passages, answers).item()

    config = _config(tmp_path, no_dropout_reader_dir)
    reader = train_reader(EXAMPLES, config)
    assert not reader.training
    with torch.no_grad():
        after = reader.loss(questions, passages, answers).item()
    assert after < 0.6 * before
    answers_out = reader.generate(questions, passages)
    assert len(answers_out) == 3 and all(isinstance(a, str) for a in answers_out)

    out = tmp_path / "reader"
    assert (out / TRAINING_ARGS_JSON).is_file()
    assert json.loads((out / "densekd_fid_reader.json").read_text())["n_passages"] == 2
    reloaded = FiDReader.from_pretrained(out).eval()
    batch = reader.tokenize(questions, passages, answers)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, reader(**batch).logits)


def test_reader_trainer_evaluate_reports_the_loss(tmp_path, tiny_reader):
    trainer = ReaderTrainer(tiny_reader, ReaderConfig(output_dir=str(tmp_path), use_cpu=True,
                                                      per_device_eval_batch_size=2))
    ds = ReaderDataset(EXAMPLES)
    metrics = trainer.evaluate(ds)
    collate = ReaderCollator(tiny_reader.tokenize_fn)
    with torch.no_grad():
        first, last = (tiny_reader(**collate([ds[i] for i in idx])).loss.item() for idx in ([0, 1], [2]))
    # HF averages per-example: each batch loss counts once per question in it
    assert metrics["eval_loss"] == pytest.approx((2 * first + last) / 3, rel=1e-5)


def test_reader_config_defaults_and_validation(tmp_path):
    cfg = ReaderConfig(output_dir=str(tmp_path))
    assert (cfg.n_passages, cfg.passage_max_length, cfg.model_name_or_path) == (5, 160, None)
    assert cfg.remove_unused_columns is False and cfg.reader_overrides()["freeze_encoder"] is False
    with pytest.raises(ValueError, match="remove_unused_columns"):
        ReaderConfig(output_dir=str(tmp_path), remove_unused_columns=True)
