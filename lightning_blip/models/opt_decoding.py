"""Decoding with a transformers ``OPTForCausalLM`` on our own KV cache, through its own modules.

transformers' ``generate`` spends most of a small model's decoding step outside the arithmetic
(mask building, cache objects, logits processors, output classes). :class:`OPTDecoding` runs the
same layers, in the same order of operations (queries scaled before the product, pre- or
post-LayerNorm as the config says), straight on the model's parameters: nothing is copied, and
BLIP-2's generation loop (:func:`lightning_blip.models.generation.generate_llm_ids`) drives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.attention import KeyValue
from lightning_blip.models.generation import rows_unchanged

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


def _linear(module: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, module.weight, module.bias)


def _norm(module: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


class OPTDecoding:
    """Next-token logits of an OPT LLM for a prefix of input embeddings, then one token per step.

    Rows come in equal groups, one per image (``R = G * k``, the beams of an image), as
    :func:`~lightning_blip.models.generation.generate_llm_ids` keeps them. The first :meth:`step`
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
        self.llm, self.decoder = llm, llm.model.decoder
        G, S = attention_mask.shape
        self.prefix, self.length = inputs_embeds, S  # positions filled in the cache
        prefix_mask = attention_mask.bool()
        self.padded = not bool(prefix_mask.all())  # else no mask: causal, then every key
        self.mask = torch.cat([prefix_mask, prefix_mask.new_ones(G, max_new_tokens)], dim=1)
        # the position-embedding row of each row's next token: its real tokens so far + OPT's offset
        self.positions = prefix_mask.sum(1, keepdim=True) + self.decoder.embed_positions.offset
        # every layer's keys and values, (layers, 2, R, H, S + max_new_tokens, D / H): one index per beam step
        self.cache: Tensor | None = None

    def step(self, ids: Tensor) -> Tensor:
        """Running sequences ``(R, T)`` (only their last token is read after the prefix) -> ``(R, V)``."""
        if self.cache is None:
            x, S = self.prefix, self.length
            prefix_mask = self.mask[:, :S]
            positions = (prefix_mask.cumsum(1) - 1).clamp(min=0) + self.decoder.embed_positions.offset
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
            embeds = F.embedding(ids[:, -1:], self.decoder.embed_tokens.weight)
            x = self._forward(embeds, positions, attn_mask, first=False)
        return _linear(self.llm.lm_head, x[:, -1]).float()

    def keep(self, rows: Tensor, images: Tensor) -> None:
        """Continue with rows ``rows`` of the last step (``images`` is not needed: no shared memory)."""
        if not rows_unchanged(rows, self.positions.shape[0]):
            self.cache = self.cache[:, :, rows]
            self.mask, self.positions = self.mask[rows], self.positions[rows]

    def _forward(self, x: Tensor, positions: Tensor, attn_mask: Tensor | None, first: bool) -> Tensor:
        """Embeddings ``(R, L, D_embed)`` at position-embedding rows ``positions`` ``(R, L)`` -> final
        hidden states; the layers' keys/values fill the cache up to ``self.length``."""
        decoder = self.decoder
        position_embeds = decoder.embed_positions.weight[positions]
        if decoder.project_in is not None:
            x = _linear(decoder.project_in, x)
        x = x + position_embeds
        for i, layer in enumerate(decoder.layers):
            if first:
                x, (k, v) = self._layer(layer, x, None, attn_mask)
                if self.cache is None:
                    (R, H, S, Dh), capacity = k.shape, self.mask.shape[1]
                    self.cache = k.new_empty(len(decoder.layers), 2, R, H, capacity, Dh)
                self.cache[i, 0, :, :, :S], self.cache[i, 1, :, :, :S] = k, v
            else:
                x, _ = self._layer(layer, x, self.cache[i], attn_mask, self.length)
        if decoder.final_layer_norm is not None:
            x = _norm(decoder.final_layer_norm, x)
        if decoder.project_out is not None:
            x = _linear(decoder.project_out, x)
        return x

    @staticmethod
    def _layer(
        layer: torch.nn.Module,
        x: Tensor,
        cache: Tensor | None,
        attn_mask: Tensor | None,
        length: int = 0,
    ) -> tuple[Tensor, KeyValue]:
        """One ``OPTDecoderLayer`` in eval mode. Without ``cache``: the causal prefix pass; with it:
        one token, its keys/values written at ``length - 1`` and the first ``length`` read."""
        attn = layer.self_attn
        R, L, D = x.shape
        H = attn.num_heads

        def heads(t: Tensor) -> Tensor:  # (R, L, D) -> (R, H, L, D / H); one view for one token
            return t.view(R, H, 1, -1) if L == 1 else t.view(R, L, H, -1).transpose(1, 2)

        residual = x
        if layer.do_layer_norm_before:
            x = _norm(layer.self_attn_layer_norm, x)
        q = heads(_linear(attn.q_proj, x) * attn.scaling)
        k, v = heads(_linear(attn.k_proj, x)), heads(_linear(attn.v_proj, x))
        if cache is not None:
            cache[0][:, :, length - 1 : length] = k
            cache[1][:, :, length - 1 : length] = v
            k, v = cache[0][:, :, :length], cache[1][:, :, :length]
        is_causal = cache is None and attn_mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=1.0)
        out = out.view(R, L, D) if L == 1 else out.transpose(1, 2).reshape(R, L, D)
        x = residual + _linear(attn.out_proj, out)
        if not layer.do_layer_norm_before:
            x = _norm(layer.self_attn_layer_norm, x)
        residual = x
        if layer.do_layer_norm_before:
            x = _norm(layer.final_layer_norm, x)
        x = residual + _linear(layer.fc2, layer.activation_fn(_linear(layer.fc1, x)))
        if not layer.do_layer_norm_before:
            x = _norm(layer.final_layer_norm, x)
        return x, (k, v)
