"""ITC: targets, hand-checked losses, momentum distillation."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_blip.losses.itc import itc_loss, itc_targets


def test_targets_diagonal_with_offset():
    t = itc_targets(2, 5, offset=2)
    assert torch.equal(t, torch.tensor([[0, 0, 1.0, 0, 0], [0, 0, 0, 1.0, 0]]))


def test_targets_spread_over_image_id_positives():
    t = itc_targets(2, 4, ids=torch.tensor([7, 8]), key_ids=torch.tensor([7, 8, 7, -100]))
    assert torch.equal(t, torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]))


def test_hand_checked_loss_without_distillation():
    feats = torch.eye(2)
    loss = itc_loss(feats, feats, feats, feats, 1.0, itc_targets(2, 2))
    # each row: logits [1, 0] with target 0 -> -log(e / (e + 1)) = log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_temperature_scales_logits():
    feats = torch.eye(2)
    loss = itc_loss(feats, feats, feats, feats, 0.5, itc_targets(2, 2))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_hand_checked_momentum_distillation():
    feats = torch.eye(2)
    momentum = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # momentum features prefer the other key
    loss = itc_loss(feats, feats, feats, feats, 1.0, itc_targets(2, 2), momentum, momentum, alpha=0.4)
    p_other = 1 / (1 + math.e)  # softmax([1, 0])[1] for the online logits
    q_other = math.e / (1 + math.e)  # softmax of the momentum logits [0, 1] puts e/(1+e) on "other"
    target_other = 0.4 * q_other
    target_own = 0.4 * (1 - q_other) + 0.6
    expected = -(target_own * math.log(1 - p_other) + target_other * math.log(p_other))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_needs_momentum_features():
    feats = torch.eye(2)
    with pytest.raises(ValueError, match="momentum"):
        itc_loss(feats, feats, feats, feats, 1.0, itc_targets(2, 2), alpha=0.4)


def test_queue_keys_act_as_negatives():
    feats = torch.eye(2)
    keys = torch.cat([feats, feats[:1]])  # a queue entry equal to image 0's text
    with_queue = itc_loss(feats, feats, keys, keys, 1.0, itc_targets(2, 3))
    without = itc_loss(feats, feats, feats, feats, 1.0, itc_targets(2, 2))
    assert with_queue > without
