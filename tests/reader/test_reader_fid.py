"""FiD reader: input layout, fusion equivalence, loss, save/load, generation, T5, frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import BaseModelOutput

from densekd.data.types import Passage
from densekd.encoders.reader import CONFIG_NAME, FiDReader, FiDReaderConfig, format_passage


def test_reader_tokenize_layout(tiny_reader, toy_qa):
    questions, passages, answers = toy_qa
    batch = tiny_reader.tokenize(questions, passages, answers)
    b, k, length = batch["input_ids"].shape
    assert (b, k) == (2, 3) and batch["attention_mask"].shape == (b, k, length)
    # question 0 has two passages: its third slot is padding
    assert batch["passage_mask"].tolist() == [[True, True, False], [True, True, True]]
    tok = tiny_reader.tokenizer
    first = tok.decode(batch["input_ids"][1, 0][batch["attention_mask"][1, 0].bool()], skip_special_tokens=True)
    assert first.startswith("question : who won super bowl 50 title : denver broncos context : the denver")
    eos = tiny_reader.model.generation_config.eos_token_id
    labels = batch["labels"]
    assert labels[0, :2].tolist() == [tok.convert_tokens_to_ids("paris"), eos] and set(labels[0, 2:].tolist()) == {-100}
    assert labels[1].tolist()[-1] == eos
    # only the first n_passages are read; passage types are interchangeable
    many = tiny_reader.tokenize(["q"], [["a", "b", "c", "d", "e"]])
    assert many["input_ids"].shape[1] == 3 and "labels" not in many
    assert format_passage("q", Passage("1", "text", "T")) == format_passage("q", ("T", "text"))
    with pytest.raises(ValueError, match="at least one passage"):
        tiny_reader.tokenize(["q"], [[]])


def _unpadded_reference_logits(reader: FiDReader, question: str, passages: list, decoder_input_ids: torch.Tensor):
    """Encode each real passage alone (no padding anywhere), concatenate, decode: plain seq2seq."""
    states = []
    for p in passages:
        enc = reader.tokenizer(format_passage(question, p), truncation=True,
                               max_length=reader.config.passage_max_length, return_tensors="pt")
        states.append(reader.model.get_encoder()(**enc).last_hidden_state[0])          # [L_i, H]
    fused = torch.cat(states)[None]                                                     # [1, sum L_i, H]
    out = reader.model(encoder_outputs=BaseModelOutput(last_hidden_state=fused),
                       attention_mask=torch.ones(fused.shape[:2], dtype=torch.long),
                       decoder_input_ids=decoder_input_ids)
    return out.logits


@pytest.mark.parametrize("reader_fixture", ["tiny_reader", "tiny_t5_reader"])
@torch.no_grad()
def test_reader_fusion_equals_seq2seq_on_concatenated_encoder_states(reader_fixture, request, toy_qa):
    questions, passages, answers = toy_qa
    reader = request.getfixturevalue(reader_fixture)
    batch = reader.tokenize(questions, passages, answers)
    b, k, length = batch["input_ids"].shape
    hidden, mask = reader.encode(batch["input_ids"], batch["attention_mask"], batch["passage_mask"])
    assert hidden.shape == (b, k * length, hidden.shape[-1])
    assert torch.equal(mask, (batch["attention_mask"] * batch["passage_mask"][:, :, None]).view(b, k * length))
    assert mask[0, 2 * length:].sum() == 0                     # the padding slot is fully masked
    # slot j of question i is exactly the encoder output of row i*k + j of the [B*k, L] batch
    flat = reader.model.get_encoder()(input_ids=batch["input_ids"].view(b * k, length),
                                      attention_mask=batch["attention_mask"].view(b * k, length)).last_hidden_state
    assert torch.equal(hidden.view(b, k, length, -1)[1, 2], flat[1 * k + 2])

    logits = reader(**batch).logits                            # [B, T, V]
    decoder_inputs = reader.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    for i in range(b):
        ref = _unpadded_reference_logits(reader, questions[i], passages[i], decoder_inputs[i:i + 1])
        real = batch["labels"][i] != -100
        torch.testing.assert_close(logits[i][real], ref[0][real], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_reader_loss_is_token_mean_and_matches_log_likelihood(tiny_reader, toy_qa):
    questions, passages, answers = toy_qa
    batch = tiny_reader.tokenize(questions, passages, answers)
    out = tiny_reader(**batch)
    labels = batch["labels"]
    manual = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    ll = tiny_reader.log_likelihood(batch["input_ids"], batch["attention_mask"], labels, batch["passage_mask"])
    assert ll.shape == (2,) and (ll < 0).all()
    torch.testing.assert_close(-ll.sum() / (labels != -100).sum(), out.loss)
    torch.testing.assert_close(tiny_reader.loss(questions, passages, answers), out.loss)
    with pytest.raises(ValueError, match="labels or decoder_input_ids"):
        tiny_reader(batch["input_ids"], batch["attention_mask"])


def test_reader_save_load_round_trip(tiny_reader, tmp_path, toy_qa):
    questions, passages, answers = toy_qa
    tiny_reader.config.n_passages = 2
    tiny_reader.save_pretrained(tmp_path / "r")
    saved = json.loads((tmp_path / "r" / CONFIG_NAME).read_text())
    assert saved["n_passages"] == 2 and (tmp_path / "r" / "model.safetensors").is_file()
    loaded = FiDReader.from_pretrained(tmp_path / "r").eval()
    assert loaded.config.n_passages == 2 and loaded.config.passage_max_length == tiny_reader.config.passage_max_length
    batch = tiny_reader.tokenize(questions, passages, answers)
    with torch.no_grad():
        assert torch.equal(tiny_reader(**batch).logits, loaded(**batch).logits)
    assert loaded.generate(questions, passages, max_new_tokens=4) == tiny_reader.generate(questions, passages,
                                                                                          max_new_tokens=4)
    # overrides win over saved values; the folder is a plain HF seq2seq checkpoint as well
    assert FiDReader.from_pretrained(tmp_path / "r", n_passages=4).config.n_passages == 4
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "r")).__name__ == "EncoderDecoderModel"


@pytest.mark.parametrize("reader_fixture", ["tiny_reader", "tiny_t5_reader"])
def test_reader_generate_returns_strings(reader_fixture, request, toy_qa):
    questions, passages, _ = toy_qa
    reader = request.getfixturevalue(reader_fixture)
    greedy = reader.generate(questions, passages, max_new_tokens=4)
    beams = reader.generate(questions, passages, max_new_tokens=4, num_beams=2)
    assert len(greedy) == len(beams) == 2 and all(isinstance(a, str) for a in greedy + beams)
    assert not reader.training
    # question 0 alone has no padded passage slot and shorter padding: same answer (masks hold in generate)
    assert reader.generate(questions[:1], passages[:1], max_new_tokens=4) == greedy[:1]


def test_reader_frozen_encoder_gets_no_gradient_and_no_dropout(tiny_reader_dir, toy_qa):
    reader = FiDReader.from_pretrained(tiny_reader_dir, freeze_encoder=True).train()
    assert not reader.model.get_encoder().training and reader.model.decoder.training
    reader.loss(*toy_qa).backward()
    assert all(p.grad is None for p in reader.model.get_encoder().parameters())
    cross = reader.model.decoder.bert.encoder.layer[0].crossattention.self.key.weight
    assert cross.grad is not None and cross.grad.abs().sum() > 0


def test_reader_state_dict_of_inner_model_loads_into_wrapper(tiny_reader, tiny_reader_dir):
    # Trainer checkpoints hold the HF model's keys; the wrapper maps them (resume_from_checkpoint)
    other = FiDReader.from_pretrained(tiny_reader_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    result = other.load_state_dict(tiny_reader.model.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), tiny_reader.parameters()))


def test_reader_config_validation():
    with pytest.raises(ValueError, match="n_passages"):
        FiDReaderConfig(n_passages=0)
    with pytest.raises(ValueError, match="decoder_layers"):
        FiDReaderConfig(decoder_layers=0)
