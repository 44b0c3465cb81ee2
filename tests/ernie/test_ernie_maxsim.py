"""MaxSim against hand-computed values with padding masks; the ragged numpy path and the model's head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.encoders.late_interaction import punctuation_ids, token_mask
from densekd.scores import maxsim, maxsim_grouped, maxsim_ragged, stack_ragged

# query: two real tokens and a padded one whose vector would add 5 + 5 if it were counted
Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
Q_MASK = torch.tensor([[1, 1, 0]])
# p1: a padded [9, 9] would win both maxes; p2: all real; p3: every real similarity is <= 0, so a
# zero-filled padding token would (wrongly) win the max of the first query token
P = torch.tensor([
    [[1.0, 0.0], [0.5, 0.5], [9.0, 9.0]],
    [[-1.0, 0.0], [0.0, 2.0], [0.0, 0.0]],
    [[-1.0, -1.0], [-2.0, 0.0], [0.0, 0.0]],
])
P_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]])
# by hand: p1: max(1, .5) + max(0, .5) = 1.5; p2: max(-1, 0, 0) + max(0, 2, 0) = 2; p3: max(-1, -2) + max(-1, 0) = -1
EXPECTED = [1.5, 2.0, -1.0]


def test_ernie_maxsim_matches_the_hand_computed_scores():
    assert maxsim(Q, Q_MASK, P, P_MASK).tolist() == [EXPECTED]
    # grouped: one query with a group of 3 gives the same row
    assert maxsim_grouped(Q, Q_MASK, P, P_MASK, group_size=3).tolist() == [EXPECTED]


def test_ernie_ragged_maxsim_drops_padding_like_the_masks():
    q = Q[0][Q_MASK[0].bool()].numpy()
    docs = [P[i][P_MASK[i].bool()].numpy() for i in range(3)]
    tokens, offsets = stack_ragged(docs)
    assert offsets.tolist() == [0, 2, 5, 7]
    np.testing.assert_allclose(maxsim_ragged(q, tokens, offsets), EXPECTED)
    with pytest.raises(ValueError, match="at least one token"):
        maxsim_ragged(q, tokens, np.array([0, 0, 7]))


def test_ernie_token_mask_skips_punctuation_only_where_asked(ernie_model):
    tok = ernie_model.tokenizer
    batch = dict(tok(["aspirin , heart .", "x"], padding=True, return_tensors="pt"))
    plain = token_mask(batch)
    skipped = token_mask(batch, torch.tensor(punctuation_ids(tok)))
    assert plain.tolist() == batch["attention_mask"].bool().tolist()
    # [CLS] aspirin , heart . [SEP]: the comma and the full stop go, the special tokens stay
    assert skipped[0].sum().item() == plain[0].sum().item() - 2
    assert skipped[1].tolist() == plain[1].tolist()


def test_ernie_colbert_head_scores_do_not_depend_on_batch_padding(ernie_model, toy_train):
    """The grouped MaxSim of a padded training batch equals the per-text ragged MaxSim of inference."""
    queries = [toy_train.queries[q].text for q in ("q1", "q5")]
    passages = [p.full_text() for p in list(toy_train.corpus.values())[:4]]  # 2 per query, mixed lengths
    with torch.no_grad():
        scores = ernie_model.compute_scores(ernie_model.tokenize_queries(queries),
                                            ernie_model.tokenize_passages(passages), group_size=2)
    view = ernie_model.to_late_interaction_encoder()
    ragged = view.score([queries[0]] * 2 + [queries[1]] * 2, passages)
    np.testing.assert_allclose(scores["colbert"].numpy().ravel(), ragged, atol=1e-5)
    # the in-batch matrix holds the grouped scores on its diagonal blocks
    in_batch = scores["colbert_in_batch"].numpy()
    np.testing.assert_allclose(in_batch[[0, 0, 1, 1], [0, 1, 2, 3]], ragged, atol=1e-5)
