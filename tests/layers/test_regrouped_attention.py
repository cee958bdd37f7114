"""The hand-written forward/backward of the regrouped cross-attention."""

from __future__ import annotations

import torch

from lightning_blip.layers.attention import MultiHeadAttention
from lightning_blip.layers.regrouped_attention import regrouped_cross_attention


def _inputs(dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(0)
    B, H, L, Dh, N, E = 2, 3, 2, 4, 5, 7
    q = torch.randn(B, H, L, Dh, generator=g, dtype=dtype)
    context = torch.randn(B, N, E, generator=g, dtype=dtype)
    weights = [torch.randn(*shape, generator=g, dtype=dtype) * 0.5 for shape in ((H * Dh, E), (H * Dh,)) * 2]
    mask = torch.rand(B, H, L, N, generator=g) > 0.4  # per image, head and query
    mask[..., 0] = True
    return q, context, weights, mask


def test_equals_attention_over_the_projected_keys_values_with_a_mask_per_head_and_query():
    q, context, (wk, bk, wv, bv), mask = _inputs()
    H, Dh = q.shape[1], q.shape[3]
    k, v = ((context @ w.T + b).unflatten(-1, (H, Dh)).transpose(1, 2) for w, b in ((wk, bk), (wv, bv)))
    scores = (q @ k.transpose(-2, -1) * Dh**-0.5).masked_fill(~mask, float("-inf"))
    expected = scores.softmax(-1) @ v
    torch.testing.assert_close(regrouped_cross_attention(q, context, wk, bk, wv, bv, mask), expected)


def test_gradients_equal_finite_differences_with_a_mask():
    q, context, weights, mask = _inputs()
    tensors = [t.requires_grad_() for t in (q, context, *weights)]
    assert torch.autograd.gradcheck(
        lambda *t: regrouped_cross_attention(*t, attn_mask=mask), tensors, eps=1e-6, atol=1e-6
    )


def test_the_key_bias_changes_nothing_and_gets_a_zero_gradient():
    q, context, (wk, bk, wv, bv), _ = _inputs()
    bk.requires_grad_()
    out = regrouped_cross_attention(q, context, wk, bk, wv, bv)
    torch.testing.assert_close(out, regrouped_cross_attention(q, context, wk, bk + 3.0, wv, bv))
    out.sum().backward()
    assert torch.equal(bk.grad, torch.zeros_like(bk))


def test_a_context_without_gradient_gets_none_and_the_rest_still_learns():
    q, context, weights, _ = _inputs()
    q.requires_grad_()
    for w in weights:
        w.requires_grad_()
    regrouped_cross_attention(q, context, *weights).pow(2).sum().backward()
    assert context.grad is None
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, weights[0], weights[2], weights[3]))


def test_under_cpu_autocast_it_runs_in_bfloat16_and_parameters_keep_float32_gradients():
    attn = MultiHeadAttention(16, 4, kv_dim=12)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 6, 12)
    expected, _ = attn(x, context=context)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, kv = attn(x, context=context)
    assert kv is None and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    out.float().sum().backward()
    assert attn.kv.key.weight.grad.dtype == torch.float32
