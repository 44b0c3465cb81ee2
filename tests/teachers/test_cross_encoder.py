"""CrossEncoder inference, save/load, the teacher fingerprint, re-ranking and the teacher losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from densekd.data.io import DataFormatError
from densekd.data.types import Passage, Query
from densekd.encoders.cross_encoder import CONFIG_NAME, CrossEncoder
from densekd.losses.contrastive import listwise_loss
from densekd.losses.pointwise import pointwise_loss
from densekd.teachers import CrossEncoderTeacher, Teacher, fingerprint_file, rerank

LONG = "Aspirin is a salicylate drug used to reduce pain, fever and inflammation in adults. " * 6
PAIRS = [
    ("does aspirin prevent heart attacks", LONG),
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("a", "b"),
    ("who won super bowl 50", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
    ("a very long query that keeps going " * 5, "short passage"),
    ("vitamin c", "Vitamin C does not prevent the common cold."),
]


@pytest.fixture(scope="module")
def tiny_ce(tiny_bert_path) -> CrossEncoder:
    torch.manual_seed(0)  # the classification head is new: seed its initialisation
    return CrossEncoder.from_pretrained(tiny_bert_path, max_length=32)


def test_predict_independent_of_order_and_batch_size(tiny_ce):
    ref = tiny_ce.predict(PAIRS, batch_size=64, show_progress=False)
    assert ref.dtype == np.float32 and ref.shape == (len(PAIRS),)
    for batch_size in (1, 2, 5):
        np.testing.assert_allclose(tiny_ce.predict(PAIRS, batch_size=batch_size, show_progress=False), ref,
                                   rtol=1e-5, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(PAIRS))
    shuffled = tiny_ce.predict([PAIRS[i] for i in perm], batch_size=3, show_progress=False)
    np.testing.assert_allclose(shuffled, ref[perm], rtol=1e-5, atol=1e-5)


def test_predict_equals_forward_on_tokenizer_padding(tiny_ce):
    """The hand-built padded batches of predict() match the tokenizer's own padding + forward()."""
    batch = tiny_ce.tokenize_pairs([q for q, _ in PAIRS], [p for _, p in PAIRS])
    assert batch["input_ids"].shape[1] == 32                      # LONG is truncated to max_length
    tiny_ce.eval()
    with torch.no_grad():
        expected = tiny_ce(batch).numpy()
    np.testing.assert_allclose(tiny_ce.predict(PAIRS, batch_size=4, show_progress=False), expected,
                               rtol=1e-5, atol=1e-5)


def test_predict_empty_and_training_mode_restored(tiny_ce):
    assert tiny_ce.predict([], show_progress=False).shape == (0,)
    tiny_ce.train()
    try:
        a = tiny_ce.predict(PAIRS[:3], show_progress=False)
        b = tiny_ce.predict(PAIRS[:3], show_progress=False)
        assert tiny_ce.training                                    # restored after predict
        np.testing.assert_array_equal(a, b)                        # dropout is off inside predict
    finally:
        tiny_ce.eval()


def test_save_load_gives_identical_logits(tiny_ce, tmp_path):
    tiny_ce.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / CONFIG_NAME).is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = CrossEncoder.from_pretrained(tmp_path)
    assert loaded.max_length == 32                                 # saved setting, not the default 256
    for name, value in tiny_ce.state_dict().items():              # bit-identical weights ...
        assert torch.equal(loaded.state_dict()[name], value), name
    # ... and logits equal up to CPU kernel rounding (oneDNN may pick other blockings per allocation)
    np.testing.assert_allclose(loaded.predict(PAIRS, show_progress=False),
                               tiny_ce.predict(PAIRS, show_progress=False), rtol=1e-6, atol=1e-7)
    # Trainer checkpoints are reloaded from the inner HF model's keys (strict here: no key is skipped)
    loaded.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)


def test_rejects_two_label_head(tiny_bert_path, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    BertForSequenceClassification.from_pretrained(tiny_bert_path, num_labels=2).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert_path).save_pretrained(tmp_path)
    with pytest.raises(DataFormatError, match="num_labels=1"):
        CrossEncoder.from_pretrained(tmp_path)


def test_fingerprint_tracks_weights_and_settings(tiny_bert_path, tmp_path):
    torch.manual_seed(0)
    teacher = CrossEncoderTeacher.from_pretrained(tiny_bert_path, max_length=32)
    assert isinstance(teacher, Teacher)
    fp = teacher.fingerprint
    assert len(fp) == 64
    np.testing.assert_array_equal(teacher.score(PAIRS), teacher.encoder.predict(PAIRS, show_progress=False))
    assert teacher.fingerprint == fp                               # unchanged by scoring (tokenizer state)
    teacher.encoder.save_pretrained(tmp_path / "a")
    assert CrossEncoderTeacher.from_pretrained(tmp_path / "a").fingerprint == fp   # stable across loads
    with torch.no_grad():
        teacher.encoder.model.classifier.bias.add_(1e-3)                   # in place: the cache must notice
    changed = teacher.fingerprint
    assert changed != fp
    teacher.encoder.save_pretrained(tmp_path / "b")
    assert fingerprint_file(tmp_path / "a" / "model.safetensors") != fingerprint_file(tmp_path / "b" / "model.safetensors")
    teacher.encoder.max_length = 16
    assert teacher.fingerprint not in (fp, changed)


def test_rerank_keeps_top_k_in_teacher_order(tiny_ce):
    teacher = CrossEncoderTeacher.from_encoder(tiny_ce)
    corpus = {f"d{i}": Passage(f"d{i}", PAIRS[i][1], title="T" if i == 1 else "") for i in range(len(PAIRS))}
    queries = {"q1": Query("q1", "aspirin and heart attacks"), "q2": Query("q2", "france")}
    run = {"q1": {"d0": 5.0, "d1": 4.0, "d2": 3.0, "d3": 9.0}, "q2": {"d4": 1.0}}
    out = rerank(teacher, run, queries, corpus, k=3, batch_size=2)
    assert list(out) == ["q1", "q2"]
    assert set(out["q1"]) == {"d3", "d0", "d1"}                    # d2 is below the first-stage top 3
    expected = teacher.score([(queries["q1"].text, corpus[p].full_text()) for p in ("d3", "d0", "d1")])
    assert out["q1"] == pytest.approx(dict(zip(("d3", "d0", "d1"), expected.tolist())), abs=1e-5)
    scores = list(out["q1"].values())
    assert scores == sorted(scores, reverse=True)
    assert list(out["q2"]) == ["d4"]
    with pytest.raises(DataFormatError, match="not in the corpus"):
        rerank(teacher, {"q1": {"nope": 1.0}}, queries, corpus, k=3)


def test_listwise_and_pointwise_losses_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    by_hand = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(3) + math.exp(1))) / 2
    assert float(listwise_loss(logits)) == pytest.approx(by_hand, rel=1e-6)
    mask = torch.tensor([[True, True, False], [True, True, True]])   # a repeated id leaves the softmax
    by_hand_masked = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(3) + math.exp(1))) / 2
    assert float(listwise_loss(logits, mask)) == pytest.approx(by_hand_masked, rel=1e-6)

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))
    # BCE: positive -> softplus(-s), negative -> softplus(s); masked entries get no weight
    terms = [softplus(-2.0), softplus(1.0), softplus(-0.0), softplus(3.0), softplus(1.0)]
    assert float(pointwise_loss(logits, mask)) == pytest.approx(sum(terms) / 5, rel=1e-6)


@pytest.mark.integration
def test_predict_matches_sentence_transformers(minilm_path, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    torch.manual_seed(0)
    CrossEncoder.from_pretrained(minilm_path, max_length=256).save_pretrained(tmp_path)
    ours = CrossEncoder.from_pretrained(tmp_path)
    pairs = PAIRS[:4]
    # activation_fn=Identity: sentence-transformers applies a sigmoid to one-label heads by default
    theirs = STCrossEncoder(str(tmp_path), num_labels=1, max_length=256, device="cpu",
                            activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(ours.predict(pairs, batch_size=2, show_progress=False),
                               theirs.predict(pairs, batch_size=2), rtol=1e-4, atol=1e-5)
