"""Tiny random FiD readers (BERT2BERT ``EncoderDecoderModel`` and T5) with the real MiniLM tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    EncoderDecoderModel,
    T5Config,
    T5ForConditionalGeneration,
)

from densekd.encoders.reader import FiDReader, FiDReaderConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            attn_implementation="eager")


def tiny_config(**overrides) -> FiDReaderConfig:
    return FiDReaderConfig(**{"n_passages": 3, "passage_max_length": 40, "answer_max_length": 8,
                              "attn_implementation": "eager", **overrides})


def build_tiny_bert2bert(tokenizer, seed: int = 0) -> EncoderDecoderModel:
    """A 2-layer, hidden-32 BERT2BERT with eager attention (so output_attentions works)."""
    torch.manual_seed(seed)
    enc = BertConfig(vocab_size=tokenizer.vocab_size, **TINY)
    dec = BertConfig(vocab_size=tokenizer.vocab_size, is_decoder=True, add_cross_attention=True, **TINY)
    return EncoderDecoderModel(encoder=BertModel(enc), decoder=BertLMHeadModel(dec)).eval()


def build_tiny_t5(tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    """A 2-layer T5 using the BERT vocabulary (start = [PAD] as in T5, EOS = [SEP])."""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=16, num_heads=2, num_layers=2, d_ff=64,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id, attn_implementation="eager")
    return T5ForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="session")
def reader_tokenizer(tiny_bert_path):
    return AutoTokenizer.from_pretrained(tiny_bert_path)


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory, reader_tokenizer) -> str:
    """A saved tiny BERT2BERT reader folder (read-only; load it with FiDReader.from_pretrained)."""
    out = tmp_path_factory.mktemp("tiny_reader")
    FiDReader(build_tiny_bert2bert(reader_tokenizer), reader_tokenizer, tiny_config()).save_pretrained(out)
    return str(out)


@pytest.fixture
def tiny_reader(tiny_reader_dir) -> FiDReader:
    """A fresh copy of the tiny reader per test, in eval mode."""
    return FiDReader.from_pretrained(tiny_reader_dir).eval()


@pytest.fixture
def tiny_t5_reader(reader_tokenizer) -> FiDReader:
    return FiDReader(build_tiny_t5(reader_tokenizer), reader_tokenizer, tiny_config()).eval()


@pytest.fixture(scope="session")
def toy_qa() -> tuple[list[str], list[list], list[str]]:
    """``(questions, passages, answers)``: 2 questions, with 2 and 3 passages (mixed passage types)."""
    return QUESTIONS, PASSAGES, ANSWERS


QUESTIONS = ["what is the capital of france", "who won super bowl 50"]
PASSAGES = [
    [("Paris", "Paris is the capital and largest city of France."), ("Coffee", "Coffee is a drink.")],
    [("Denver Broncos", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers in 2016."),
     "Regular exercise lowers blood pressure.", ("Sleep", "Lack of sleep impairs memory.")],
]
ANSWERS = ["Paris", "Denver Broncos"]
