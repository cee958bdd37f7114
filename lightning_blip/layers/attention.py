"""Multi-head attention through ``F.scaled_dot_product_attention``, with key/value caching."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.regrouped_attention import regrouped_cross_attention

KeyValue = tuple[Tensor, Tensor]
"""Keys and values of one attention layer, each ``(B, H, S, Dh)``."""


class LayerCache(NamedTuple):
    """Per-layer decoding cache: growing self-attention keys/values and the image's fixed ones.

    ``image_mask`` ``(B, N)`` (1 = attend) masks padded cross-attention memory, e.g. the question
    states that BLIP's VQA answer decoder reads; None = attend to every memory token (images).
    """

    self_kv: KeyValue | None
    image_kv: KeyValue | None
    image_mask: Tensor | None = None


def index_kv(layers: list[KeyValue | None], index: Tensor) -> list[KeyValue | None]:
    """Select batch rows ``index`` of every layer's keys/values (None entries stay None)."""
    return [None if kv is None else (kv[0][index], kv[1][index]) for kv in layers]


def concat_kv(parts: list[list[KeyValue | None]]) -> list[KeyValue | None]:
    """Concatenate per-layer keys/values of several batches along the batch dimension."""
    return [
        None if layer[0] is None else (torch.cat([kv[0] for kv in layer]), torch.cat([kv[1] for kv in layer]))
        for layer in zip(*parts)
    ]


def attention_probs(scores: Tensor, attn_mask: Tensor | None, dropout: float, dtype: torch.dtype) -> Tensor:
    """Masked softmax (in fp32) of ``(B, H, L, S)`` scores, then dropout; ``attn_mask`` True = attend."""
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(dtype)
    return F.dropout(probs, dropout) if dropout > 0 else probs


class KeyValueProjection(nn.Module):
    """The key and value projections of an attention layer, ``(B, S, kv_dim)`` -> ``(B, H, S, Dh)`` each.

    A module of its own so that the image's cross-attention keys/values can be computed through a
    forward call (which FSDP2 hooks to gather sharded weights) once, outside the text passes.
    """

    def __init__(self, kv_dim: int, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)

    def forward(self, x: Tensor) -> KeyValue:
        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        return heads(self.key(x)), heads(self.value(x))

    def attend(
        self, q: Tensor, context: Tensor, attn_mask: Tensor | None = None, dropout: float = 0.0
    ) -> Tensor:
        """Attention of projected queries ``q`` ``(B, H, L, Dh)`` over ``context`` ``(B, N, kv_dim)``.

        Returns ``(B, H, L, Dh)``, equal to attending over :meth:`forward`'s keys/values, without
        computing them (:func:`regrouped_cross_attention`): the cheaper form when few queries read the
        context once.
        """
        key, value = self.key, self.value
        return regrouped_cross_attention(
            q, context, key.weight, key.bias, value.weight, value.bias, attn_mask, dropout
        )


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate query/key/value projections (BERT layout).

    Keys and values can be passed in precomputed (``kv``): the image's cross-attention keys/values
    are computed once per image and reused by every text pass and every decoding step.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.kv = KeyValueProjection(kv_dim or dim, dim, num_heads)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        kv: KeyValue | None = None,
        past_kv: KeyValue | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, KeyValue | None]:
        """Attend from ``x`` ``(B, L, D)``.

        Keys/values come from ``kv`` if given, else from ``context`` (cross-attention), else from
        ``x`` (self-attention), appended to ``past_kv`` when decoding with a cache.
        ``attn_mask`` is boolean, True = attend, broadcastable to ``(B, H, L, S)``.
        Given ``kv`` with ``B / G`` rows (``G`` > 1), each holds the keys/values of ``G`` consecutive
        rows of ``x`` (the beams of one image): they are shared, not copied per row.
        Cross-attention from few rows (``H * L < D``) over a ``context`` used once skips the keys/values
        (:meth:`KeyValueProjection.attend`) and returns None for them.
        Returns the output ``(B, L, D)`` and the keys/values used (for caching).
        """
        q = self.query(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        if (
            kv is None
            and context is not None
            and past_kv is None
            and self.num_heads * x.shape[1] < x.shape[-1]
        ):
            out = self.kv.attend(q, context, attn_mask, self.dropout if self.training else 0.0)
            return out.transpose(1, 2).flatten(2), None
        if kv is None:
            kv = self.kv(x if context is None else context)
            if past_kv is not None:
                kv = (torch.cat([past_kv[0], kv[0]], dim=2), torch.cat([past_kv[1], kv[1]], dim=2))
        k, v = kv
        if q.dtype != k.dtype:  # cached keys from another precision (autocast on/off)
            k, v = k.to(q.dtype), v.to(q.dtype)
        groups = q.shape[0] // max(1, k.shape[0])
        if q.shape[0] != k.shape[0]:
            shared_mask = attn_mask is None or (
                attn_mask.shape[-2] == 1 and attn_mask.shape[0] in (1, k.shape[0])
            )
            if q.shape[0] != groups * k.shape[0] or not shared_mask:
                raise ValueError(
                    f"{k.shape[0]} rows of keys/values for {q.shape[0]} query rows: need a multiple, "
                    "and a mask (if any) with one row per key/value row and one query position"
                )
            # (G*Bk, H, L, Dh) -> (Bk, H, G*L, Dh): the G rows that share keys/values become one row
            q = q.unflatten(0, (k.shape[0], groups)).transpose(1, 2).flatten(2, 3)
        out = self._attend(q, k, v, attn_mask)
        if groups > 1:
            out = out.unflatten(2, (groups, -1)).transpose(1, 2).flatten(0, 1)
        return out.transpose(1, 2).flatten(2), kv

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Scaled dot-product attention ``(B, H, L, Dh)`` x ``(B, H, S, Dh)`` -> ``(B, H, L, Dh)``."""
        dropout = self.dropout if self.training else 0.0
        if dropout > 0 and q.device.type == "cpu":
            # SDPA has no fused CPU kernel with dropout and its fallback is slower than this form
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            out = attention_probs(scores, attn_mask, dropout, q.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return out


class AttentionSublayer(nn.Module):
    """BERT's attention sublayer: attention, output projection, dropout, residual, post-LayerNorm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_dim: int | None = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, num_heads, kv_dim, attention_dropout)
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, **attention_kwargs) -> tuple[Tensor, KeyValue]:
        """``(B, L, D)`` -> ``(B, L, D)`` and the attention's keys/values."""
        out, kv = self.attention(x, **attention_kwargs)
        out = self.dense(out)
        return self.norm(x + (self.dropout(out) if self.training else out)), kv


class FeedForward(nn.Module):
    """BERT's feed-forward sublayer: Linear, GELU, Linear, dropout, residual, post-LayerNorm."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.1, eps: float = 1e-12) -> None:
        super().__init__()
        self.intermediate = nn.Linear(dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        out = self.output(F.gelu(self.intermediate(x)))
        return self.norm(x + (self.dropout(out) if self.training else out))


def padding_mask(attention_mask: Tensor) -> Tensor:
    """``(B, S)`` 1/0 mask -> boolean ``(B, 1, 1, S)``, True = attend."""
    return attention_mask.bool()[:, None, None, :]


def causal_padding_mask(attention_mask: Tensor, query_length: int) -> Tensor:
    """Causal mask for the last ``query_length`` of ``S`` positions, combined with key padding.

    ``attention_mask`` ``(B, S)`` covers cached and new positions; returns boolean ``(B, 1, L, S)``.
    """
    if query_length == 1:  # the last position sees every position (a decoding step)
        return padding_mask(attention_mask)
    total = attention_mask.shape[1]
    positions = torch.arange(total, device=attention_mask.device)
    causal = positions[None, :] <= positions[total - query_length :, None]  # (L, S)
    return causal[None, None] & padding_mask(attention_mask)
