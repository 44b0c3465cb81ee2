"""Teacher fingerprints are cache keys of annotated score files (``~/.cache/densekd``): pinned values.

The weights of the tiny models are overwritten with a fixed function of each tensor's position, so the
pins do not depend on the random initialisation; they do depend on the MiniLM tokenizer files and the
parameter names of the installed transformers (a change there changes the cache keys too, which these
tests then report). The values were computed with the teacher classes as they were before the single
``Teacher`` contract (a ``CrossEncoder`` subclass aliasing ``score`` to ``predict``; a ``FiDTeacher``
hashing its reader on every call).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel

from densekd.encoders.cross_encoder import CrossEncoder
from densekd.encoders.reader import FiDReader, FiDReaderConfig
from densekd.teachers.cross_encoder import CrossEncoderTeacher
from densekd.teachers.fid import FiDTeacher

CROSS_ENCODER_PIN = "7807172c9dc6b294c5fae7726f30c71887b20fca844870aca9d0b4381a75d54b"
# re-pinned when the FiD fingerprint began to cover the tokenizer and the generation config (session 13)
FID_PINS = {"fid-kd": "346d511f9d91c98f1484a6233fe121b0470935e27f35bb185ad3f3f3b98d9aa2",
            "adist": "6471f178971f7280c12ad9237f97f54cc85f5df2c9cca0e74f2e1ac790313167"}


def fill_deterministic_(module: torch.nn.Module) -> None:
    """Overwrite every floating-point tensor of ``module`` with ``0.02 * sin(position + tensor index)``."""
    with torch.no_grad():
        for i, (_, tensor) in enumerate(sorted(module.state_dict().items())):
            if tensor.is_floating_point():
                values = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) + i) * 0.02
                tensor.copy_(values.view(tensor.shape).to(tensor.dtype))


def test_cross_encoder_fingerprint_is_pinned(tiny_bert_path, tmp_path):
    encoder = CrossEncoder.from_pretrained(tiny_bert_path, max_length=32)
    fill_deterministic_(encoder.model)
    assert CrossEncoderTeacher.from_encoder(encoder).fingerprint == CROSS_ENCODER_PIN
    encoder.save_pretrained(tmp_path)                      # the pipeline loads its teacher from a folder
    assert CrossEncoderTeacher.from_pretrained(tmp_path).fingerprint == CROSS_ENCODER_PIN


@pytest.mark.parametrize("scoring", sorted(FID_PINS))
def test_reader_fingerprint_is_pinned(tiny_bert_path, scoring):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_path)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "attn_implementation": "eager"}
    model = EncoderDecoderModel(
        encoder=BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **tiny)),
        decoder=BertLMHeadModel(BertConfig(vocab_size=tokenizer.vocab_size, is_decoder=True,
                                           add_cross_attention=True, **tiny)))
    fill_deterministic_(model)
    config = FiDReaderConfig(n_passages=3, passage_max_length=40, answer_max_length=8, attn_implementation="eager")
    teacher = FiDTeacher(FiDReader(model, tokenizer, config), scoring)
    assert teacher.fingerprint == FID_PINS[scoring]
    # what decides the scores besides the weights: the generation config (the reader's own answer when none
    # is given) and the tokenizer
    model.generation_config.max_length = 7
    regenerated = teacher.fingerprint
    assert regenerated != FID_PINS[scoring]
    tokenizer.add_tokens(["densekdtoken"])
    assert FiDTeacher(FiDReader(model, tokenizer, config), scoring).fingerprint != regenerated
