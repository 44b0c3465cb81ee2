"""The extractive pointer reader: inputs, frozen-layer caching, scores, answers, io, teacher, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from densekd.data.types import Passage
from densekd.encoders.span_inputs import answer_char_spans
from densekd.encoders.span_reader import SpanReader, best_spans, passage_scores
from densekd.teachers.base import CandidateList
from densekd.teachers.span_reader import (
    SpanReaderTeacher,
    predict_answers,
    read_questions,
)
from densekd.training.reader_trainer import ReaderExample
from densekd.training.span_reader_config import SpanReaderArgs
from densekd.training.span_reader_trainer import (
    SpanReaderDataset,
    pad_collate,
    train_span_reader,
)

QUESTIONS = ["Which team won Super Bowl 50?", "Where is the Eiffel Tower?"]
PASSAGES = [
    [Passage("a", "The Denver Broncos won Super Bowl 50. Go denver broncos!", "Super Bowl 50"),
     Passage("b", "Carolina lost the game in Santa Clara.", "Carolina Panthers")],
    [Passage("c", "The Eiffel Tower stands in Paris, France.", "Eiffel Tower")],
]
ANSWERS = [["Denver Broncos"], ["Paris"]]


@pytest.fixture()
def reader(tiny_bert_path) -> SpanReader:
    torch.manual_seed(0)
    return SpanReader.from_pretrained(tiny_bert_path, frozen_layers=1, n_passages=3, max_length=48).eval()


def _tokens(reader, batch, b, i, which):
    ids = batch.input_ids[b, i][getattr(batch, which)[b, i]]
    return reader.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_pointer_reads_only_passage_text_and_targets_every_answer_occurrence(reader):
    batch = reader.tokenize(QUESTIONS, PASSAGES, ANSWERS)
    assert batch.input_ids.shape[:2] == (2, 2) and batch.passage_mask.tolist() == [[True, True], [True, False]]
    text_tokens = _tokens(reader, batch, 0, 0, "token_mask")
    assert text_tokens[:3] == ["the", "denver", "broncos"]          # no question, title or special token
    assert "[SEP]" not in text_tokens and "which" not in text_tokens
    assert _tokens(reader, batch, 0, 0, "start_targets") == ["denver", "denver"]
    assert _tokens(reader, batch, 0, 0, "end_targets") == ["broncos", "broncos"]
    assert not batch.start_targets[0, 1].any() and not batch.token_mask[1, 1].any()
    assert answer_char_spans("Parisian Paris", ["paris"]) == [(9, 14)]      # whole words only


def test_an_answer_cut_by_truncation_is_no_target(reader):
    long = Passage("x", "filler " * 60 + "Denver Broncos", "t")
    batch = reader.tokenize([QUESTIONS[0]], [[long]], [ANSWERS[0]])
    assert batch.attention_mask.sum() == reader.config.max_length and not batch.start_targets.any()


def test_cached_lower_layers_give_the_full_forward(reader, tiny_bert_path):
    full = SpanReader.from_pretrained(tiny_bert_path, frozen_layers=0, n_passages=3, max_length=48).eval()
    full.load_state_dict(reader.state_dict())
    batch = reader.tokenize(QUESTIONS, PASSAGES, ANSWERS)
    with torch.no_grad():
        a, b = reader(**batch.model_inputs()), full(**batch.model_inputs())
        B, k, L = batch.input_ids.shape
        hidden = reader.lower(batch.input_ids.view(B * k, L), batch.attention_mask.view(B * k, L),
                              batch.token_type_ids.view(B * k, L)).view(B, k, L, -1)
        c = reader(hidden=hidden, attention_mask=batch.attention_mask, token_mask=batch.token_mask,
                   start_targets=batch.start_targets, end_targets=batch.end_targets)
    real = batch.attention_mask.bool()
    assert torch.allclose(a["start_logits"][real], b["start_logits"][real], atol=1e-5)
    assert torch.allclose(a["start_logits"][real], c["start_logits"][real], atol=1e-5)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-5)
    assert all(not p.requires_grad for p in reader.model.embeddings.parameters())
    assert all(not p.requires_grad for p in reader.model.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in reader.model.encoder.layer[1].parameters())


def test_softmax_of_mass_scores_is_the_pointer_mass_of_each_passage():
    g = torch.Generator().manual_seed(1)
    start, end = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    mask = torch.rand(2, 3, 7, generator=g) > 0.3
    mask[:, :, 0] = True
    shared = torch.softmax(start.masked_fill(~mask, float("-inf")).flatten(1), -1).view(2, 3, 7).sum(-1)
    assert torch.allclose(torch.softmax(passage_scores(start, end, mask, "mass"), -1), shared, atol=1e-6)
    span = passage_scores(start, end, mask, "span", max_tokens=1)      # one-token spans: best start + end
    assert torch.allclose(span, (start + end).masked_fill(~mask, float("-inf")).max(-1).values)


def test_best_span_decodes_the_text_and_respects_the_length_limit(reader):
    batch = reader.tokenize([QUESTIONS[0]], [PASSAGES[0][:1]])
    L = batch.input_ids.shape[-1]
    start, end = torch.full((1, 1, L), -9.0), torch.full((1, 1, L), -9.0)
    first = int(batch.token_mask[0, 0].nonzero()[1])                 # "denver"
    start[0, 0, first], end[0, 0, first + 1] = 5.0, 5.0              # ... "broncos"
    assert best_spans(batch, start, end, max_tokens=4)[0][:2] == ("Denver Broncos", 0)
    assert best_spans(batch, start, end, max_tokens=1)[0][0] in ("Denver", "Broncos")


def test_save_and_load_round_trip_keeps_scores_and_fingerprint(reader, tmp_path):
    reader.save_pretrained(tmp_path / "r")
    again = SpanReader.from_pretrained(tmp_path / "r", frozen_layers=0).eval()   # the saved config wins
    assert again.config == reader.config
    t1, t2 = SpanReaderTeacher(reader), SpanReaderTeacher(again)
    lists = [CandidateList(q, ps) for q, ps in zip(QUESTIONS, PASSAGES)]
    for x, y in zip(t1.score_candidates(lists), t2.score_candidates(lists)):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert t1.fingerprint == t2.fingerprint != SpanReaderTeacher(reader, "span").fingerprint
    with torch.no_grad():
        again.head.bias.add_(1.0)
    assert t2.fingerprint != t1.fingerprint


def test_teacher_scores_a_passage_the_same_alone_in_any_batch_and_as_the_reader_reads_it(reader):
    teacher = SpanReaderTeacher(reader, batch_size=1)
    lists = [CandidateList(q, ps) for q, ps in zip(QUESTIONS, PASSAGES)]
    joint = teacher.score_candidates(lists, batch_size=3)
    alone = [teacher.score_candidates([CandidateList(q, [p])])[0][0] for q, ps in zip(QUESTIONS, PASSAGES) for p in ps]
    np.testing.assert_allclose(np.concatenate(joint), alone, atol=1e-4)
    readings = read_questions(reader, QUESTIONS, PASSAGES)
    np.testing.assert_allclose(np.concatenate([r.mass for r in readings]), alone, atol=1e-4)
    assert [len(r.mass) for r in readings] == [2, 1]
    assert predict_answers(reader, QUESTIONS, PASSAGES) == [r.answer for r in readings]
    # one span matrix serves the readings' span scores and their answers: the scores are the "span" teacher's
    span_scores = SpanReaderTeacher(reader, "span").score_candidates(lists)
    np.testing.assert_allclose(np.concatenate([r.span for r in readings]), np.concatenate(span_scores), atol=1e-4)


def test_training_moves_the_pointer_onto_the_answer_and_collates_ragged_questions(reader, tmp_path):
    examples = [ReaderExample(q, a, ps) for q, a, ps in zip(QUESTIONS, ANSWERS, PASSAGES)] * 4
    data = SpanReaderDataset(reader, examples)
    assert data.answerable == len(examples) and "hidden" in data[0]
    batch = pad_collate([data[0], data[1]])
    assert batch["hidden"].shape[:2] == (2, 2) and not batch["token_mask"][1, 1].any()
    with torch.no_grad():
        before = float(reader(**batch)["loss"])
    args = SpanReaderArgs(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_train_epochs=15,
                          learning_rate=3e-3, n_passages=3, max_length=48, frozen_layers=1, save_strategy="no",
                          warmup_steps=0, logging_steps=5, seed=0, disable_tqdm=True, select_weight=1.0)
    trained, history = train_span_reader(examples, args, reader=reader)
    with torch.no_grad():
        after = float(trained(**batch)["loss"])
    assert after < 0.5 * before and any("loss" in h for h in history)
    assert predict_answers(trained, QUESTIONS, PASSAGES) == ["Denver Broncos", "Paris"]
    first = read_questions(trained, QUESTIONS[:1], PASSAGES[:1])[0]
    assert first.select[0] > first.select[1] and first.mass[0] > first.mass[1]   # the answer passage wins
    assert (tmp_path / "out" / "densekd_span_reader.json").exists() and trained.config.select_weight == 1.0
    with pytest.raises(ValueError, match="max_length"):
        train_span_reader(examples, dataclasses.replace(args, max_length=64), reader=trained)


def test_resumed_span_reader_training_matches_an_uninterrupted_run(tiny_bert_path, tmp_path):
    from transformers import TrainerCallback

    from densekd.training.span_reader_trainer import SpanReaderTrainer

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    examples = [ReaderExample(q, a, ps) for q, a, ps in zip(QUESTIONS, ANSWERS, PASSAGES)] * 2

    def trainer(out, callbacks=(), **kw):
        torch.manual_seed(0)
        r = SpanReader.from_pretrained(tiny_bert_path, frozen_layers=1, n_passages=3, max_length=48).eval()
        args = SpanReaderArgs(output_dir=str(out), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3,
                              n_passages=3, max_length=48, frozen_layers=1, seed=0, disable_tqdm=True, **kw)
        return SpanReaderTrainer(r, args, train_dataset=SpanReaderDataset(r, examples), callbacks=list(callbacks))

    straight = trainer(tmp_path / "a", save_strategy="no")
    straight.train()
    interrupted = trainer(tmp_path / "b", [StopAt()], save_strategy="steps", save_steps=3)
    interrupted.train()
    resumed = trainer(tmp_path / "b", save_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_title_folds_are_stable_balanced_and_the_teacher_refuses_unknown_scorings(reader):
    from densekd.pipeline.readers import title_folds

    titles = [f"article {i}" for i in range(9)] * 3
    folds = title_folds(titles)
    assert folds == title_folds(list(reversed(titles))) and sorted(folds.values()).count(0) == 5
    assert set(title_folds(["a", "b"]).values()) == {0, 1}
    with pytest.raises(ValueError, match="scoring"):
        SpanReaderTeacher(reader, "attention")


def test_caching_hands_the_freed_heap_back_after_every_chunk(reader, monkeypatch):
    """Kept states between freed temporaries fragment the heap (5x their size on squad-open): the dataset
    trims it once per chunk, and trimming changes no cached value."""
    import densekd.training.span_reader_trainer as srt

    examples = [ReaderExample(q, a, ps) for q, a, ps in zip(QUESTIONS, ANSWERS, PASSAGES)] * 5  # 10 questions
    trimmed = SpanReaderDataset(reader, examples, chunk=4)
    calls = []
    monkeypatch.setattr(srt, "release_free_heap", lambda: calls.append(1))
    untrimmed = SpanReaderDataset(reader, examples, chunk=4)
    assert len(calls) == 3  # ceil(10 / 4) chunks
    assert all(torch.equal(a[k], b[k]) for a, b in zip(trimmed.items, untrimmed.items) for k in a)
