"""FiD teacher: hook-captured pre-softmax scores vs output_attentions, value norms, passage scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.teachers.fid import (
    PRESETS,
    CrossAttentionRecorder,
    FiDTeacher,
    aggregate_cross_attention,
    attention_probs,
    find_cross_attention,
)

QUESTION = "who won super bowl 50"
CANDIDATES = [("Denver Broncos", "The Denver Broncos won Super Bowl 50."), "Coffee is a drink.",
              ("Sleep", "Lack of sleep impairs memory consolidation in adults.")]


@pytest.mark.parametrize("reader_fixture", ["tiny_reader", "tiny_t5_reader"])
@torch.no_grad()
def test_reader_captured_pre_softmax_scores_softmax_to_output_attentions(reader_fixture, request, toy_qa):
    reader = request.getfixturevalue(reader_fixture)
    batch = reader.tokenize(*toy_qa)                     # question 0 has a padded passage slot
    with CrossAttentionRecorder(reader.model) as rec:
        out = reader(**batch, output_attentions=True)
    pre = rec.scores()
    b, k, length = batch["input_ids"].shape
    layers = len(find_cross_attention(reader.model))
    assert pre.shape == (layers, b, 2, batch["labels"].shape[1], k * length)
    returned = torch.stack(out.cross_attentions)         # eager attention: [layers, B, heads, T, k*L]
    mask = (batch["attention_mask"] * batch["passage_mask"][:, :, None]).view(b, k * length)
    torch.testing.assert_close(attention_probs(pre, mask), returned, atol=1e-6, rtol=1e-5)
    # hooks are gone after the block
    assert all(not layer.query._forward_hooks for layer in rec.layers)


@torch.no_grad()
def test_reader_recorded_value_norms_match_value_projection(tiny_reader, toy_qa):
    batch = tiny_reader.tokenize(*toy_qa)
    with CrossAttentionRecorder(tiny_reader.model, values=True) as rec:
        tiny_reader(**batch)
    hidden, _ = tiny_reader.encode(batch["input_ids"], batch["attention_mask"], batch["passage_mask"])
    layer = rec.layers[1]
    v = layer.value(hidden).view(*hidden.shape[:2], layer.num_heads, -1)      # [B, S, heads, d]
    torch.testing.assert_close(rec.value_norms()[1], v.norm(dim=-1).transpose(1, 2))


@torch.no_grad()
def test_reader_fid_kd_scores_match_output_attentions_up_to_a_constant(tiny_reader):
    # log(softmax) = pre-softmax - logsumexp(query): the per-query constant is shared by all
    # passages, so passage *differences* of the paper's score are visible in output_attentions too
    scores = FiDTeacher(tiny_reader, "fid-kd").score_passages(QUESTION, CANDIDATES)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    batch = tiny_reader.tokenize([QUESTION], [CANDIDATES], n_passages=3)
    start = torch.tensor([[tiny_reader.model.generation_config.decoder_start_token_id]])
    out = tiny_reader(**batch, decoder_input_ids=start, output_attentions=True)
    log_probs = torch.stack(out.cross_attentions).clamp_min(1e-30).log()
    mask = batch["attention_mask"] * batch["passage_mask"][:, :, None]
    manual = aggregate_cross_attention(log_probs, mask)[0].numpy()
    np.testing.assert_allclose(scores - scores[0], manual - manual[0], atol=1e-4)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reader_teacher_presets_are_finite_and_permutation_equivariant(tiny_reader, preset):
    teacher = FiDTeacher(tiny_reader, preset)
    scores = teacher.score_passages(QUESTION, CANDIDATES, "Denver Broncos")
    assert scores.dtype == np.float32 and scores.shape == (3,) and np.isfinite(scores).all()
    # cross-attention has no notion of passage order: permuting passages permutes the scores
    order = [2, 0, 1]
    permuted = teacher.score_passages(QUESTION, [CANDIDATES[i] for i in order], "Denver Broncos")
    np.testing.assert_allclose(permuted, scores[order], rtol=1e-4, atol=1e-5)
    if PRESETS[preset].scores == "post" and not PRESETS[preset].value_weighted:
        assert scores.sum() == pytest.approx(1.0, abs=1e-4)   # attention mass over all passages
    assert not tiny_reader.training


def test_reader_teacher_first_token_ignores_answer_and_all_tokens_uses_it(tiny_reader):
    first = FiDTeacher(tiny_reader, "fid-kd")
    np.testing.assert_array_equal(first.score_passages(QUESTION, CANDIDATES, "Denver Broncos"),
                                  first.score_passages(QUESTION, CANDIDATES, None))
    every = FiDTeacher(tiny_reader, "attention-all")
    assert not np.allclose(every.score_passages(QUESTION, CANDIDATES, "Denver Broncos"),
                           every.score_passages(QUESTION, CANDIDATES, "the carolina panthers lost"))
    # without an answer, the reader's own greedy answer is scored
    generated = tiny_reader.generate([QUESTION], [CANDIDATES], n_passages=3)[0]
    np.testing.assert_allclose(every.score_passages(QUESTION, CANDIDATES, None),
                               every.score_passages(QUESTION, CANDIDATES, generated), rtol=1e-5)


@torch.no_grad()
def test_reader_pdist_is_single_passage_mean_log_likelihood(tiny_reader):
    scores = FiDTeacher(tiny_reader, "pdist", batch_size=2).score_passages(QUESTION, CANDIDATES, "Denver Broncos")
    for i, passage in enumerate(CANDIDATES):
        batch = tiny_reader.tokenize([QUESTION], [[passage]], ["Denver Broncos"])
        ll = tiny_reader.log_likelihood(batch["input_ids"], batch["attention_mask"], batch["labels"])
        assert scores[i] == pytest.approx(float(ll[0]) / int((batch["labels"] != -100).sum()), abs=1e-4)
    assert (scores < 0).all()


def test_reader_teacher_fingerprint_tracks_weights_and_scoring(tiny_reader):
    teacher = FiDTeacher(tiny_reader, "fid-kd")
    before = teacher.fingerprint
    assert before == FiDTeacher(tiny_reader, "fid-kd").fingerprint
    assert before != FiDTeacher(tiny_reader, "adist").fingerprint
    with torch.no_grad():
        next(tiny_reader.parameters()).add_(1.0)
    assert teacher.fingerprint != before      # computed from the current weights, never stale
    with pytest.raises(ValueError, match="presets"):
        FiDTeacher(tiny_reader, "nope")


def test_reader_teacher_scores_candidate_lists_as_score_passages_does(tiny_reader):
    from densekd.data.types import Passage
    from densekd.teachers import CandidateList, Teacher

    teacher = FiDTeacher(tiny_reader, "attention-all")
    assert isinstance(teacher, Teacher)
    passages = [Passage("a", "The Denver Broncos won Super Bowl 50.", title="Denver Broncos"),
                Passage("b", "Coffee is a drink.")]
    lists = [CandidateList(QUESTION, passages, "Denver Broncos"), CandidateList(QUESTION, passages[::-1], None),
             CandidateList(QUESTION, [])]
    scored = teacher.score_candidates(lists)
    np.testing.assert_array_equal(scored[0], teacher.score_passages(QUESTION, passages, "Denver Broncos"))
    np.testing.assert_array_equal(scored[1], teacher.score_passages(QUESTION, passages[::-1], None))
    assert scored[2].shape == (0,)
