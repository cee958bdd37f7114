"""Cross-attention from few queries over a context read once, with the projections on the queries' side.

Attention of ``L`` queries (``H`` heads of width ``Dh``, ``D = H * Dh``) over ``N`` context features
``X`` of width ``E`` usually projects the context to keys and values, ``X Wk^T`` and ``X Wv^T``: ``D``
multiply-adds per context feature each. Moving the projections to the queries' side,

    scores = q (X Wk^T + bk)^T = (q Wk) X^T + q . bk        P (X Wv^T + bv) = (P X) Wv^T + (P 1) bv,

costs ``H * L`` per context feature instead, the cheaper form when ``H * L < D`` (the Q-Former's 32
queries over the image: 12 * 32 < 768). The key bias adds the same ``q . bk`` to a whole row of scores,
which the softmax cancels: it changes nothing and its gradient is zero, so it is left out of the
scores and given a zero gradient (it still takes part, as DDP expects of every parameter).

Forward and backward are written out by hand: every large product is one batched matrix product over
the images, the two contributions to the context's gradient are accumulated in place, and the
context's gradient is skipped when the context needs none. The rows of an image are ordered by query,
then head (``(B, L * H, .)``), so that one head's rows of all images are a strided view
(``(H, B * L, .)``, row stride ``H * C``) which the per-head products read and write in place: no
tensor is copied to move heads next to each other. Dropout draws the same mask as ``F.dropout`` on
the ``(B, H, L, N)`` probabilities.
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
    """Shapes: ``A = q Wk`` and ``P X`` are ``(B, L * H, E)``: rows by query, then head."""

    @staticmethod
    def forward(ctx, q, x, wk, bk, wv, bv, attn_mask, dropout):
        B, H, L, Dh = q.shape
        E, N = x.shape[-1], x.shape[1]
        q = q.transpose(1, 2).mul(Dh**-0.5).contiguous()  # (B, L, H, Dh)
        wk, wv = wk.view(H, Dh, E), wv.view(H, Dh, E)
        a = q.new_empty(B, L * H, E)
        torch.bmm(_per_head(q, H), wk, out=_per_head(a, H))
        scores = torch.bmm(a, x.transpose(1, 2))  # (B, L*H, N)
        if attn_mask is not None:
            scores = scores.view(B, L, H, N).masked_fill(~attn_mask.transpose(1, 2), float("-inf"))
            scores = scores.view(B, L * H, N)
        probs = scores.softmax(dim=-1, dtype=_at_least_float32(q.dtype)).to(q.dtype)
        keep = dropped = None
        if dropout > 0:  # drawn in (B, H, L, N) order, as F.dropout draws
            keep = torch.empty(B, H, L, N, dtype=q.dtype, device=q.device).bernoulli_(1 - dropout)
            keep = keep.div_(1 - dropout).transpose(1, 2)
            dropped = _times(probs, keep)
        dropped = probs if dropped is None else dropped
        mixed = torch.bmm(dropped, x)  # (B, L*H, E)
        weight_sums = _per_head(dropped.sum(-1, keepdim=True), H)  # (H, B*L, 1)
        out = q.new_empty(B, L, H, Dh)
        torch.baddbmm(
            weight_sums * bv.view(H, 1, Dh), _per_head(mixed, H), wv.transpose(1, 2), out=_per_head(out, H)
        )
        ctx.save_for_backward(q, x, wk, wv, bv, a, probs, keep, dropped, mixed, weight_sums)
        return out.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, x, wk, wv, bv, a, probs, keep, dropped, mixed, weight_sums = ctx.saved_tensors
        B, L, H, Dh = q.shape
        E = x.shape[-1]
        need_q, need_x, need_wk, need_bk, need_wv, need_bv = ctx.needs_input_grad[:6]
        g_heads = _per_head(grad_out.transpose(1, 2).contiguous(), H)  # (H, B*L, Dh)
        g_wv = torch.bmm(g_heads.transpose(1, 2), _per_head(mixed, H)).view(H * Dh, E) if need_wv else None
        g_bv = (g_heads * weight_sums).sum(1).view(-1) if need_bv else None
        g_mixed = q.new_empty(B, L * H, E)
        torch.bmm(g_heads, wv, out=_per_head(g_mixed, H))
        g_sums = (g_heads * bv.view(H, 1, Dh)).sum(-1).t().reshape(B, L * H, 1)
        g_dropped = torch.baddbmm(g_sums, g_mixed, x.transpose(1, 2))  # (B, L*H, N)
        g_probs = _times(g_dropped, keep) if keep is not None else g_dropped
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
            g_a = _per_head(torch.bmm(g_scores, x), H)  # (H, B*L, E)
            g_wk = torch.bmm(_per_head(q, H).transpose(1, 2), g_a).view(H * Dh, E) if need_wk else None
            if need_q:
                g_q = q.new_empty(B, L, H, Dh)
                torch.bmm(g_a, wk.transpose(1, 2), out=_per_head(g_q, H))
                g_q = g_q.mul_(Dh**-0.5).transpose(1, 2)
        return g_q, g_x, g_wk, g_bk, g_wv, g_bv, None, None


def _per_head(t: Tensor, heads: int) -> Tensor:
    """A view ``(H, B * L, C)`` of ``(B, L * H, C)`` or ``(B, L, H, C)`` rows ordered by query, then head."""
    return t.reshape(-1, heads, t.shape[-1]).transpose(0, 1)


def _times(t: Tensor, keep: Tensor) -> Tensor:
    """``t`` ``(B, L * H, N)`` times the dropout mask ``keep`` ``(B, L, H, N)`` (a strided view), laid out as ``t``."""
    out = torch.empty_like(t)
    torch.mul(t.view(keep.shape), keep, out=out.view(keep.shape))
    return out


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
