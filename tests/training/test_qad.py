"""Quantisation-aware distillation: the loss, what training changes, the CLI's output and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from densekd.cli.main import main as cli_main
from densekd.encoders.dense import DenseEncoder
from densekd.encoders.fake_quant import FakeQuantLinear
from densekd.losses.embedding import embedding_distillation_loss
from densekd.training.qad import QadConfig, fake_quant_copy, int8_cosine, quantization_aware_distill

PASSAGES = [f"passage {i} about {w} and its effects on {v}" for i, (w, v) in enumerate(
    [("aspirin", "heart"), ("vitamin c", "colds"), ("smoking", "lungs"), ("paris", "france"),
     ("statins", "cholesterol"), ("insulin", "glucose"), ("sleep", "memory"), ("coffee", "focus")] * 4)]


def test_loss_zero_for_identical_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    same = embedding_distillation_loss(x, x)
    assert same["cosine"].abs() < 1e-6 and same["in_batch_kl"].abs() < 1e-6
    other = embedding_distillation_loss(torch.nn.functional.normalize(x + 0.3 * torch.randn(6, 8), dim=-1), x)
    assert other["cosine"] > 0 and other["in_batch_kl"] > 0
    assert torch.isclose(other["loss"], other["cosine"] + other["in_batch_kl"])
    assert torch.isclose(embedding_distillation_loss(x * 0.9, x, score_weight=0.0)["loss"],
                         embedding_distillation_loss(x * 0.9, x, score_weight=0.0)["cosine"])
    with pytest.raises(ValueError, match="one shape"):
        embedding_distillation_loss(x[:, :4], x)


def test_qad_leaves_input_untouched_and_returns_plain_weights(tiny_bert_path: str, tmp_path: Path) -> None:
    enc = DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=32)
    ref = enc.encode_passages(PASSAGES)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = QadConfig(output_dir=str(tmp_path / "t"), max_steps=6, learning_rate=1e-3, per_device_train_batch_size=8,
                    disable_tqdm=True, seed=0)
    student = quantization_aware_distill(enc, PASSAGES, cfg, queries=["aspirin and heart", "coffee"])
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())   # the teacher is not trained
    np.testing.assert_allclose(enc.encode_passages(PASSAGES), ref, atol=1e-6)
    assert not any(isinstance(m, FakeQuantLinear) for m in student.modules())
    assert set(student.state_dict()) == set(before)                               # saves like any checkpoint
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.fixture(scope="module")
def outlier_bert_path(tmp_path_factory, minilm_path: str) -> str:
    """A tiny random BERT whose Linear weights have 2 % outliers (x40), as trained transformers do.

    The outliers set each channel's int8 scale, so the other weights round coarsely: int8 changes
    the vectors measurably (a plain tiny random model is rounded almost exactly).
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(minilm_path)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    model, gen = BertModel(cfg), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.mul_(4)
                mod.weight[torch.rand(mod.weight.shape, generator=gen) < 0.02] *= 40
    out = tmp_path_factory.mktemp("outlier_bert")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_qad_brings_simulated_int8_closer_to_fp32(outlier_bert_path: str, tmp_path: Path) -> None:
    """The property QAD exists for: after training, int8 rounding moves the vectors less than before."""
    enc = DenseEncoder.from_pretrained(outlier_bert_path, passage_max_length=32)
    before = 1 - int8_cosine(enc, enc, PASSAGES).double().mean()
    assert before > 1e-4                                  # there is a rounding error to remove
    cfg = QadConfig(output_dir=str(tmp_path / "t"), max_steps=40, learning_rate=3e-4, per_device_train_batch_size=16,
                    score_weight=0.0, disable_tqdm=True, seed=0, warmup_steps=0)
    student = quantization_aware_distill(enc, PASSAGES, cfg)
    after = 1 - int8_cosine(student, enc, PASSAGES).double().mean()
    assert after < 0.8 * before


def test_teacher_stays_in_eval_mode_while_training(tiny_bert_path: str) -> None:
    """The Trainer calls model.train(): a teacher in train mode would give dropout-noised targets."""
    from densekd.training.qad import _SelfDistillModel

    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    model = _SelfDistillModel(fake_quant_copy(enc), enc, QadConfig(output_dir=None))
    model.train()
    assert model.student.training and not any(m.training for m in model.teacher.modules())


def test_fake_quant_copy_refuses_a_model_without_linear_layers() -> None:
    class NoLinear(torch.nn.Module):
        projection = None

    with pytest.raises(ValueError, match="no nn.Linear"):
        fake_quant_copy(NoLinear())


def test_cli_qad_writes_a_servable_model(tiny_bert_path: str, toy_beir_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "qad"
    argv = ["qad", "--corpus", toy_beir_dir / "corpus.jsonl", "--queries", toy_beir_dir / "queries.jsonl",
            "--model", tiny_bert_path, "--out", out, "--passages", "6", "--held-out", "2", "--max-steps", "2",
            "--batch-size", "4", "--max-length", "32"]
    assert cli_main([str(a) for a in argv]) == 0
    manifest = json.loads((out / "qad.json").read_text())
    assert manifest["train_passages"] == 6 and manifest["held_out_passages"] == 2 and manifest["train_queries"] == 5
    assert 0 < manifest["simulated_int8_cosine_to_fp32"]["after"]["mean"] <= 1 + 1e-6
    assert not (out / ".trainer").exists()
    reloaded = DenseEncoder.from_pretrained(str(out))
    assert reloaded.encode_passages(["aspirin"]).shape == (1, reloaded.dim)
    assert "simulated int8 cosine" in capsys.readouterr().err


def test_cli_qad_bad_input_writes_nothing(tiny_bert_path: str, toy_beir_dir: Path, tmp_path: Path, capsys) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    base = ["qad", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--model", tiny_bert_path]
    assert cli_main([*base, "--out", str(keep)]) == 2                          # a folder of the user's files
    assert (keep / "notes.txt").read_text() == "mine" and len(list(keep.iterdir())) == 1
    assert cli_main([*base, "--out", str(tmp_path / "x"), "--max-steps", "0"]) == 2
    assert cli_main([*base, "--out", str(tmp_path / "y"), "--learning-rate", "nan"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    err = capsys.readouterr().err
    assert "no densekd qad model" in err and "max_steps" in err
