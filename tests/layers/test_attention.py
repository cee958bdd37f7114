"""Attention: the CPU training path with dropout computes what SDPA computes."""

from __future__ import annotations

import torch

from lightning_blip.layers import attention as attention_module
from lightning_blip.layers.attention import MultiHeadAttention, causal_padding_mask


def test_cpu_dropout_path_equals_sdpa_when_dropout_is_the_identity(monkeypatch):
    attn = MultiHeadAttention(32, 4, dropout=0.1)
    x = torch.randn(2, 5, 32)
    mask = causal_padding_mask(torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]), 5)
    expected, _ = attn.eval()(x, attn_mask=mask)  # eval: SDPA without dropout
    seen = []
    monkeypatch.setattr(attention_module.F, "dropout", lambda t, p: seen.append(p) or t)
    out, _ = attn.train()(x, attn_mask=mask)
    assert seen == [0.1]
    torch.testing.assert_close(out, expected)


def test_dropout_is_active_in_training_only():
    attn = MultiHeadAttention(32, 4, dropout=0.5)
    x = torch.randn(2, 5, 32)
    assert not torch.allclose(attn.train()(x)[0], attn.train()(x)[0])
    torch.testing.assert_close(attn.eval()(x)[0], attn.eval()(x)[0])
