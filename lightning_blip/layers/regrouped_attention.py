"""Cross-attention from few queries over a context read once, with the projections on the queries' side.

Attention of ``L`` queries (``H`` heads of width ``Dh``, ``D = H * Dh``) over ``N`` context features
``X`` of width ``E`` usually projects the context to keys and values, ``X Wk^T`` and ``X Wv^T``: ``D``
multiply-adds per context feature each. Moving the projections to the queries' side,

    scores = q (X Wk^T + bk)^T = (q Wk) X^T + q . bk        P (X Wv^T + bv) = (P X) Wv^T + (P 1) bv,

costs ``H * L`` per context feature instead, the cheaper form when ``H * L < D`` (the Q-Former's 32
queries over the image: 12 * 32 < 768). The key bias adds the same ``q . bk`` to a whole row of scores,
which the softmax cancels: it changes nothing and its gradient is zero, so it is left out of the
scores and given a zero gradient (it still takes part, as DDP expects of every parameter). Forward and backward are written out by hand so that every
large product is one batched matrix product over the images, with the two contributions to the
context's gradient accumulated in place, and so that the context's gradient is skipped when the
context needs none. Dropout draws the same mask as ``F.dropout`` on the ``(B, H, L, N)`` probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def regrouped_cross_attention(
    q: Tensor,
    context: Tensor,
    key_weight: Tensor,
    key_bias: Tensor,
    value_weight: Tensor,
    value_bias: Tensor,
    attn_mask: Tensor | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """Attention of projected queries over the keys/values ``context`` would give, without them.

    Args:
        q: ``(B, H, L, Dh)`` projected queries (unscaled).
        context: ``(B, N, E)`` the features the keys/values would be projected from.
        key_weight, value_weight: ``(H * Dh, E)`` the key and value projections; biases ``(H * Dh,)``.
        attn_mask: boolean, True = attend, broadcastable to ``(B, H, L, N)``.
        dropout: dropout rate on the attention probabilities.

    Returns:
        ``(B, H, L, Dh)``, equal to ``softmax(q K^T / sqrt(Dh)) V`` with ``K, V = X Wk^T + bk, X Wv^T + bv``.
    """
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
    tensors = (q, context, key_weight, key_bias, value_weight, value_bias)
    return _RegroupedCrossAttention.apply(*(t.to(dtype) for t in tensors), attn_mask, dropout)


class _RegroupedCrossAttention(torch.autograd.Function):
    """Shapes: ``A = q Wk`` and ``P X`` are ``(B, H * L, E)`` (rows by head, then query)."""

    @staticmethod
    def forward(ctx, q, x, wk, bk, wv, bv, attn_mask, dropout):
        B, H, L, Dh = q.shape
        E = x.shape[-1]
        q = q * Dh**-0.5
        q_heads = q.transpose(0, 1).reshape(H, B * L, Dh)
        wk, wv = wk.view(H, Dh, E), wv.view(H, Dh, E)
        a = _by_image(torch.bmm(q_heads, wk), B)  # (B, H*L, E)
        scores = torch.bmm(a, x.transpose(1, 2))  # (B, H*L, N)
        if attn_mask is not None:
            scores = scores.view(B, H, L, -1).masked_fill(~attn_mask, float("-inf")).view(B, H * L, -1)
        probs = scores.softmax(dim=-1, dtype=_at_least_float32(q.dtype)).to(q.dtype)
        keep = None
        if dropout > 0:
            keep = torch.empty_like(probs).bernoulli_(1 - dropout).div_(1 - dropout)
        dropped = probs * keep if keep is not None else probs
        mixed = _by_head(torch.bmm(dropped, x), H)  # (H, B*L, E)
        weight_sums = _by_head(dropped.sum(-1, keepdim=True), H)  # (H, B*L, 1)
        out = torch.baddbmm(weight_sums * bv.view(H, 1, Dh), mixed, wv.transpose(1, 2))
        ctx.save_for_backward(q_heads, x, wk, wv, bv, a, probs, keep, dropped, mixed, weight_sums)
        ctx.shape = (B, H, L, Dh, E)
        return out.view(H, B, L, Dh).transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q_heads, x, wk, wv, bv, a, probs, keep, dropped, mixed, weight_sums = ctx.saved_tensors
        B, H, L, Dh, E = ctx.shape
        need_q, need_x, need_wk, need_bk, need_wv, need_bv = ctx.needs_input_grad[:6]
        g_heads = grad_out.transpose(0, 1).reshape(H, B * L, Dh)
        g_wv = torch.bmm(g_heads.transpose(1, 2), mixed).view(H * Dh, E) if need_wv else None
        g_bv = (g_heads * weight_sums).sum(1).view(-1) if need_bv else None
        g_mixed = _by_image(torch.bmm(g_heads, wv), B)  # (B, H*L, E)
        g_sums = _by_image((g_heads * bv.view(H, 1, Dh)).sum(-1, keepdim=True), B)
        g_dropped = torch.baddbmm(g_sums, g_mixed, x.transpose(1, 2))  # (B, H*L, N)
        g_probs = g_dropped * keep if keep is not None else g_dropped
        wide = _at_least_float32(probs.dtype)  # the softmax's backward in fp32 (or fp64)
        p32, g32 = probs.to(wide), g_probs.to(wide)
        g_scores = (p32 * (g32 - (g32 * p32).sum(-1, keepdim=True))).to(probs.dtype)
        g_x = None
        if need_x:
            g_x = torch.bmm(dropped.transpose(1, 2), g_mixed)
            g_x.baddbmm_(g_scores.transpose(1, 2), a)
        g_bk = torch.zeros(H * Dh, dtype=wk.dtype, device=wk.device) if need_bk else None
        g_q = g_wk = None
        if need_q or need_wk:
            g_a = _by_head(torch.bmm(g_scores, x), H)  # (H, B*L, E)
            g_wk = torch.bmm(q_heads.transpose(1, 2), g_a).view(H * Dh, E) if need_wk else None
            if need_q:
                g_q = torch.bmm(g_a, wk.transpose(1, 2)).view(H, B, L, Dh).transpose(0, 1) * Dh**-0.5
        return g_q, g_x, g_wk, g_bk, g_wv, g_bv, None, None


def _by_image(t: Tensor, batch: int) -> Tensor:
    """``(H, B * L, C)`` -> ``(B, H * L, C)``."""
    H, _, C = t.shape
    return t.view(H, batch, -1, C).transpose(0, 1).reshape(batch, -1, C)


def _by_head(t: Tensor, heads: int) -> Tensor:
    """``(B, H * L, C)`` -> ``(H, B * L, C)``."""
    B, _, C = t.shape
    return t.view(B, heads, -1, C).transpose(0, 1).reshape(heads, -1, C)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
