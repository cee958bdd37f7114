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


def test_cross_attention_over_a_context_read_once_equals_attention_over_its_keys_values():
    """``context`` with few query rows (H * L < D) skips the keys/values: same outputs and gradients."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 4, kv_dim=48, dropout=0.3)
    for p in attn.parameters():  # non-zero biases, so the bias terms of the regrouped form count
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 5, 64)
    context = torch.randn(3, 9, 48)
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7]).bool()[:, None, None, :]
    for training in (False, True):
        attn.train(training)
        results = []
        for use_context in (True, False):
            attn.zero_grad()
            inputs = [x.clone().requires_grad_(), context.clone().requires_grad_()]
            torch.manual_seed(1)  # the same dropout draws: both forms drop probabilities of one shape
            if use_context:
                out, kv = attn(inputs[0], context=inputs[1], attn_mask=mask)
                assert kv is None  # the regrouped form ran
            else:
                out, _ = attn(inputs[0], kv=attn.kv(inputs[1]), attn_mask=mask)
            out.pow(2).sum().backward()
            grads = [t.grad for t in inputs] + [p.grad for p in attn.parameters()]
            results.append((out, grads))
        (out_a, grads_a), (out_b, grads_b) = results
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cross_attention_from_many_rows_computes_the_keys_values():
    attn = MultiHeadAttention(16, 4, kv_dim=8)
    _, kv = attn(torch.randn(2, 4, 16), context=torch.randn(2, 3, 8))  # H * L = 16: not fewer than D
    assert kv is not None and kv[0].shape == (2, 4, 3, 4)
