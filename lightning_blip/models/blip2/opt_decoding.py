"""Decoding with a transformers ``OPTForCausalLM`` on our own KV cache, with its own parameters.

transformers' ``generate`` spends most of a small model's decoding step outside the arithmetic
(mask building, cache objects, logits processors, output classes). :class:`OPTDecoding` runs the
same layers, in the same order of operations (queries scaled before the product, pre- or
post-LayerNorm as the config says), straight on the model's parameters: nothing is copied, and
BLIP-2's generation loop (:func:`lightning_blip.models.shared.generation.generate_llm_ids`) drives it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.attention import KeyValue
from lightning_blip.models.shared.generation import rows_unchanged

_PLAIN = (nn.Linear, nn.LayerNorm, nn.Embedding)


def runs_opt(llm: nn.Module) -> bool:
    """``llm`` is a transformers ``OPTForCausalLM`` that :class:`OPTDecoding` can run: plain layers
    (``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``) without hooks, holding plain tensors (not
    sharded by FSDP, not quantised), so that reading their parameters is what calling them does."""
    if type(llm).__name__ != "OPTForCausalLM" or not hasattr(llm, "model"):
        return False
    positions = llm.model.decoder.embed_positions  # an nn.Embedding subclass: only its rows are read
    for module in llm.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if isinstance(module, _PLAIN) and type(module) not in _PLAIN and module is not positions:
            return False
    return all(type(p.data) is torch.Tensor for p in llm.parameters())


Linear = tuple[Tensor, Tensor | None]
"""A linear layer's weight and bias."""
Norm = tuple[tuple[int, ...], Tensor | None, Tensor | None, float] | None
"""A LayerNorm's shape, weight, bias and epsilon (None: no LayerNorm)."""


class _Layer(NamedTuple):
    """The parameters of one ``OPTDecoderLayer``, read once per generation (attribute lookups on
    modules cost more than a small layer's arithmetic)."""

    norm_before: bool
    heads: int
    scaling: float
    attention_norm: Norm
    query: Linear
    key: Linear
    value: Linear
    output: Linear
    ffn_norm: Norm
    fc1: Linear
    activation: nn.Module
    fc2: Linear


def _linear_of(module: nn.Linear | None) -> Linear | None:
    return None if module is None else (module.weight, module.bias)


def _norm_of(module: nn.LayerNorm | None) -> Norm:
    return None if module is None else (module.normalized_shape, module.weight, module.bias, module.eps)


def _layer_of(layer: nn.Module) -> _Layer:
    attn = layer.self_attn
    return _Layer(
        layer.do_layer_norm_before, attn.num_heads, attn.scaling, _norm_of(layer.self_attn_layer_norm),
        *(_linear_of(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)),
        _norm_of(layer.final_layer_norm), _linear_of(layer.fc1), layer.activation_fn, _linear_of(layer.fc2),
    )  # fmt: skip


def _norm(norm: Norm, x: Tensor) -> Tensor:
    return x if norm is None else F.layer_norm(x, *norm)


class OPTDecoding:
    """Next-token logits of an OPT LLM for a prefix of input embeddings, then one token per step.

    Rows come in equal groups, one per image (``R = G * k``, the beams of an image), as
    :func:`~lightning_blip.models.shared.generation.generate_llm_ids` keeps them. The first :meth:`step`
    reads the whole prefix (one row per image); later steps read the last token of each row.
    :meth:`keep` re-indexes the cache to the rows that continue. The cache is allocated once, for
    the prefix and ``max_new_tokens``, and filled in place.

    Args:
        llm: a transformers ``OPTForCausalLM`` in eval mode.
        inputs_embeds: ``(G, S, D_embed)`` prefix embeddings (left-padded).
        attention_mask: ``(G, S)`` 1 = token, 0 = padding.
        max_new_tokens: the most tokens that will be decoded after the prefix.
    """

    def __init__(
        self, llm: torch.nn.Module, inputs_embeds: Tensor, attention_mask: Tensor, max_new_tokens: int
    ) -> None:
        if not runs_opt(llm):
            raise TypeError(
                f"OPTDecoding runs an unsharded, unquantised transformers OPTForCausalLM, got {type(llm).__name__}"
            )
        decoder = llm.model.decoder
        self.embed_tokens, self.embed_positions = decoder.embed_tokens.weight, decoder.embed_positions.weight
        self.project_in, self.project_out = _linear_of(decoder.project_in), _linear_of(decoder.project_out)
        self.final_norm, self.lm_head = _norm_of(decoder.final_layer_norm), _linear_of(llm.lm_head)
        self.layers = [_layer_of(layer) for layer in decoder.layers]
        G, S = attention_mask.shape
        self.prefix, self.length = inputs_embeds, S  # positions filled in the cache
        prefix_mask = attention_mask.bool()
        self.padded = not bool(prefix_mask.all())  # else no mask: causal, then every key
        self.mask = torch.cat([prefix_mask, prefix_mask.new_ones(G, max_new_tokens)], dim=1)
        # the position-embedding row of each row's next token: its real tokens so far + OPT's offset
        self.offset = decoder.embed_positions.offset
        self.positions = prefix_mask.sum(1, keepdim=True) + self.offset
        # every layer's keys and values, (layers, 2, R, H, S + max_new_tokens, D / H): one index per beam step
        self.cache: Tensor | None = None

    def step(self, ids: Tensor) -> Tensor:
        """Running sequences ``(R, T)`` (only their last token is read after the prefix) -> ``(R, V)``."""
        if self.cache is None:
            x, S = self.prefix, self.length
            prefix_mask = self.mask[:, :S]
            positions = (prefix_mask.cumsum(1) - 1).clamp(min=0) + self.offset
            attn_mask = None
            if self.padded:  # causal and no padded key; a padded query reads itself (never NaN)
                causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
                eye = torch.eye(S, dtype=torch.bool, device=x.device)
                attn_mask = ((causal & prefix_mask[:, None, :]) | eye)[:, None]
            x = self._forward(x, positions, attn_mask, first=True)
        else:
            positions, self.positions = self.positions, self.positions + 1
            self.length += 1
            attn_mask = self.mask[:, None, None, : self.length] if self.padded else None
            embeds = F.embedding(ids[:, -1:], self.embed_tokens)
            x = self._forward(embeds, positions, attn_mask, first=False)
        return F.linear(x[:, -1], *self.lm_head).float()

    def keep(self, rows: Tensor, images: Tensor) -> None:
        """Continue with rows ``rows`` of the last step (``images`` is not needed: no shared memory)."""
        if not rows_unchanged(rows, self.positions.shape[0]):
            self.cache, self.positions = self.cache[:, :, rows], self.positions[rows]
            if self.padded:
                self.mask = self.mask[rows]

    def _forward(self, x: Tensor, positions: Tensor, attn_mask: Tensor | None, first: bool) -> Tensor:
        """Embeddings ``(R, L, D_embed)`` at position-embedding rows ``positions`` ``(R, L)`` -> final
        hidden states; the layers' keys/values fill the cache up to ``self.length``."""
        position_embeds = self.embed_positions[positions]
        if self.project_in is not None:
            x = F.linear(x, *self.project_in)
        x = x + position_embeds
        for i, layer in enumerate(self.layers):
            if first:
                x, (k, v) = self._layer(layer, x, None, attn_mask)
                if self.cache is None:
                    (R, H, S, Dh), capacity = k.shape, self.mask.shape[1]
                    self.cache = k.new_empty(len(self.layers), 2, R, H, capacity, Dh)
                self.cache[i, 0, :, :, :S], self.cache[i, 1, :, :, :S] = k, v
            else:
                x, _ = self._layer(layer, x, self.cache[i], attn_mask, self.length)
        x = _norm(self.final_norm, x)
        return x if self.project_out is None else F.linear(x, *self.project_out)

    @staticmethod
    def _layer(
        layer: _Layer, x: Tensor, cache: Tensor | None, attn_mask: Tensor | None, length: int = 0
    ) -> tuple[Tensor, KeyValue]:
        """One ``OPTDecoderLayer`` in eval mode. Without ``cache``: the causal prefix pass; with it
        (``(2, R, H, capacity, D / H)``): one token, its keys/values written at ``length - 1`` and
        the first ``length`` read."""
        R, L, D = x.shape
        # (R, L, D) -> (R, H, L, D / H): one view for one token
        shape, one = (R, layer.heads, 1, -1) if L == 1 else (R, L, layer.heads, -1), L == 1
        residual = x
        if layer.norm_before:
            x = _norm(layer.attention_norm, x)
        q = (F.linear(x, *layer.query) * layer.scaling).view(shape)
        k, v = F.linear(x, *layer.key).view(shape), F.linear(x, *layer.value).view(shape)
        if not one:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            cache[0][:, :, length - 1 : length] = k
            cache[1][:, :, length - 1 : length] = v
            k, v = cache[0][:, :, :length], cache[1][:, :, :length]
        is_causal = cache is None and attn_mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=1.0)
        out = out.view(R, L, D) if one else out.transpose(1, 2).reshape(R, L, D)
        x = residual + F.linear(out, *layer.output)
        if not layer.norm_before:
            x = _norm(layer.attention_norm, x)
        residual = x
        if layer.norm_before:
            x = _norm(layer.ffn_norm, x)
        x = residual + F.linear(layer.activation(F.linear(x, *layer.fc1)), *layer.fc2)
        if not layer.norm_before:
            x = _norm(layer.ffn_norm, x)
        return x, (k, v)
