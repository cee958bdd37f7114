"""ITM hard negatives and loss; LM labels and label-smoothed loss (hand-checked)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_blip.losses.itm import NegativeSampler, hard_negative_weights, itm_loss, select_negatives
from lightning_blip.losses.lm import lm_labels, lm_loss


def test_weights_are_softmax_plus_epsilon_with_positives_zeroed():
    sim = torch.zeros(3, 3)
    w = hard_negative_weights(sim, torch.eye(3, dtype=torch.bool), epsilon=1e-4)
    expected = torch.full((3, 3), 1 / 3 + 1e-4).fill_diagonal_(0)
    torch.testing.assert_close(w, expected)


def test_a_row_of_only_positives_falls_back_to_the_others_but_never_its_own_pair():
    positive = torch.tensor([[True, True, True], [True, True, True], [False, True, True]])
    w = hard_negative_weights(torch.zeros(3, 3), positive, epsilon=0.0, own=torch.tensor([0, 1, 2]))
    assert w.tolist()[:2] == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]  # row 1's own pair is not its first
    assert w[2, 0] > 0 and w[2, 1:].sum() == 0
    with pytest.raises(ValueError, match="pass `own`"):
        hard_negative_weights(torch.zeros(3, 3), positive, epsilon=0.0)
    with pytest.raises(ValueError, match="a pool of 1"):
        hard_negative_weights(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), own=torch.tensor([0]))


def test_underflowed_weights_fall_back_to_the_non_positives_only():
    """epsilon 0 at a low temperature: the softmax of the negatives is 0; positives stay excluded."""
    sim = torch.tensor([[1.0, 0.9, -0.2, -0.3]]) / 0.005
    positive = torch.tensor([[True, True, False, False]])
    w = hard_negative_weights(sim, positive, epsilon=0.0, own=torch.tensor([0]))
    assert w.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_sampling_never_picks_a_positive_and_hardest_is_argmax():
    torch.manual_seed(0)
    sim = torch.randn(4, 4) * 5
    positive = torch.eye(4, dtype=torch.bool)
    w = hard_negative_weights(sim, positive)
    for _ in range(50):
        assert not positive[torch.arange(4), select_negatives(w)].any()
    masked = sim.masked_fill(positive, -1e9)
    assert torch.equal(select_negatives(w, hardest=True), masked.argmax(1))


def test_sampler_validates_and_returns_both_directions():
    with pytest.raises(ValueError, match="strategy"):
        NegativeSampler(strategy="random")
    sim = torch.tensor([[5.0, 1.0, 3.0], [0.0, 5.0, 2.0], [4.0, 0.0, 5.0]])
    neg_text, neg_image = NegativeSampler("hardest")(
        sim, sim.t().contiguous(), torch.eye(3, dtype=torch.bool)
    )
    assert neg_text.tolist() == [2, 2, 0] and neg_image.tolist() == [2, 0, 0]


def test_itm_loss_labels_first_rows_as_matches():
    assert itm_loss(torch.zeros(6, 2), 2).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[0.0, 10.0], [10.0, 0.0], [10.0, 0.0]])
    assert itm_loss(logits, 1).item() < 1e-3
    assert itm_loss(logits.flip(1), 1).item() > 5


def test_lm_labels_ignore_padding_and_prompt():
    ids = torch.tensor([[30522, 5, 6, 7, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert lm_labels(ids, mask).tolist() == [[30522, 5, 6, 7, 102, -100]]
    assert lm_labels(ids, mask, prompt_length=3).tolist() == [[-100, -100, -100, 7, 102, -100]]


def test_hand_checked_label_smoothing_and_shift():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])  # position 0 predicts token 1
    labels = torch.tensor([[-100, 0]])
    logp = torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    expected = -(0.9 * logp[0] + 0.1 * logp.mean())
    assert lm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert lm_loss(logits, labels, label_smoothing=0.0).item() == pytest.approx(-logp[0].item(), rel=1e-6)


def test_ignored_tokens_do_not_count():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[0, 1, -100, 3]])
    total = lm_loss(logits, labels, reduction="sum")
    ce = torch.nn.functional.cross_entropy
    parts = ce(logits[0, 0], torch.tensor(1), label_smoothing=0.1) + ce(
        logits[0, 2], torch.tensor(3), label_smoothing=0.1
    )
    torch.testing.assert_close(total, parts)
    torch.testing.assert_close(lm_loss(logits, labels), total / 2)
