"""The MED text transformer: BERT-shaped, with the three modes of BLIP.

1. ``"text"``: unimodal encoder, bidirectional self-attention, no cross-attention.
2. ``"multimodal"``: image-grounded encoder, bidirectional self-attention + cross-attention.
3. ``"decoder"``: image-grounded causal decoder, causal self-attention + cross-attention.

The decoder shares every parameter with the encoder except the self-attention sublayers (the
paper's best sharing, Table 3): each layer holds a second self-attention used in decoder mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_blip.layers.attention import (
    AttentionSublayer,
    FeedForward,
    KeyValue,
    LayerCache,
    causal_padding_mask,
    padding_mask,
)
from lightning_blip.layers.init import bert_init_

Mode = Literal["text", "multimodal", "decoder"]


@dataclass
class MEDConfig:
    """Text transformer configuration (defaults: BERT-base with the BLIP vocabulary).

    Attributes:
        vocab_size: bert-base-uncased's 30522 + [DEC] + [ENC].
        hidden_size: width D.
        num_layers: transformer layers.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        max_position_embeddings: longest text.
        encoder_width: width of the image tokens that cross-attention reads.
        cross_attention: layers have cross-attention to the image (False: a text-only encoder).
        decoder: layers have a second, causal self-attention for decoder mode.
        encoder: layers have the bidirectional self-attention of the two encoder modes (False: a
            decoder-only model, such as BLIP's VQA answer decoder).
        dropout: hidden dropout.
        attention_dropout: dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: padding id of the tokenizer.
        initializer_range: std of the normal initialisation.
        grad_checkpointing: recompute each layer in backward.
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    encoder_width: int = 768
    cross_attention: bool = True
    decoder: bool = True
    encoder: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    grad_checkpointing: bool = False


class MEDOutput(NamedTuple):
    """Text transformer output.

    Attributes:
        last_hidden_state: ``(B, L, D)``.
        cache: one :class:`LayerCache` per layer when ``use_cache`` was set, else None.
    """

    last_hidden_state: Tensor
    cache: list[LayerCache] | None


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (BLIP has no token types)."""

    def __init__(self, config: MEDConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, position_offset: int = 0) -> Tensor:
        """``(B, L)`` ids -> ``(B, L, D)``."""
        positions = torch.arange(
            position_offset, position_offset + input_ids.shape[1], device=input_ids.device
        )
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = self.norm(x)
        return self.dropout(x) if self.training else x


class MEDLayer(nn.Module):
    """One MED layer: self-attention (encoder or decoder copy), optional cross-attention, FFN."""

    def __init__(self, config: MEDConfig) -> None:
        super().__init__()
        D, H = config.hidden_size, config.num_heads
        kw = {
            "dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            "eps": config.layer_norm_eps,
        }
        self.self_attn = AttentionSublayer(D, H, **kw) if config.encoder else None
        self.decoder_self_attn = AttentionSublayer(D, H, **kw) if config.decoder else None
        self.cross_attn = (
            AttentionSublayer(D, H, kv_dim=config.encoder_width, **kw) if config.cross_attention else None
        )
        self.ffn = FeedForward(D, config.intermediate_size, config.dropout, config.layer_norm_eps)

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor | None,
        decoder: bool,
        image_kv: KeyValue | None,
        past_self_kv: KeyValue | None = None,
        first_token_only: bool = False,
        image_mask: Tensor | None = None,
    ) -> tuple[Tensor, KeyValue]:
        """``(B, L, D)`` -> ``(B, L, D)`` and this layer's self-attention keys/values.

        ``first_token_only``: only position 0 is computed (its self-attention still reads every
        position), giving ``(B, 1, D)``. ``image_mask``: boolean ``(B, 1, 1, N)`` cross-attention mask.
        """
        if decoder and self.decoder_self_attn is None:
            raise ValueError("decoder mode needs MEDConfig(decoder=True)")
        if not decoder and self.self_attn is None:
            raise ValueError("the encoder modes need MEDConfig(encoder=True)")
        self_attn = self.decoder_self_attn if decoder else self.self_attn
        if first_token_only:
            x, self_kv = self_attn(x[:, :1], context=x, attn_mask=self_mask)
        else:
            x, self_kv = self_attn(x, past_kv=past_self_kv, attn_mask=self_mask)
        if image_kv is not None:
            x, _ = self.cross_attn(x, kv=image_kv, attn_mask=image_mask)
        return self.ffn(x), self_kv


class MEDTextModel(nn.Module):
    """BERT-shaped text transformer with the unimodal, image-grounded and decoder modes."""

    def __init__(self, config: MEDConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(MEDLayer(config) for _ in range(config.num_layers))
        bert_init_(self, self.config.initializer_range)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that take no weight decay."""
        return {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"}

    def image_kv(self, image_embeds: Tensor) -> list[KeyValue]:
        """Cross-attention keys/values of every layer for ``(B, N, encoder_width)`` image tokens.

        Compute once per image and pass to every text pass (ITM, LM, each decoding step, each
        retrieval candidate): index the batch dimension to pair images with other texts.
        """
        if not self.config.cross_attention:
            raise ValueError("this text model has no cross-attention (MEDConfig.cross_attention=False)")
        return [layer.cross_attn.attention.kv(image_embeds) for layer in self.layers]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        mode: Mode = "text",
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue] | None = None,
        cache: list[LayerCache] | None = None,
        use_cache: bool = False,
        first_token_only: bool = False,
        image_mask: Tensor | None = None,
    ) -> MEDOutput:
        """Run the text transformer.

        Args:
            input_ids: ``(B, L)`` token ids (new tokens only when ``cache`` is given).
            attention_mask: ``(B, S)`` 1 = token, 0 = padding, over cached + new tokens; None: no
                padding (a decoding step then attends without a mask, the cheaper form).
            mode: ``"text"``, ``"multimodal"`` or ``"decoder"``.
            image_embeds: ``(B, N, encoder_width)`` image tokens (modes 2 and 3), or
            image_kv: their precomputed per-layer keys/values from :meth:`image_kv`.
            cache: per-layer cache from an earlier decoder call.
            use_cache: return the cache (decoder mode).
            first_token_only: the last layer computes position 0 only, so ``last_hidden_state`` is
                ``(B, 1, D)``: for ITC and ITM, which read only the [CLS] / [ENC] state. Equal to
                the full pass's first position and saves the last layer's work on the others.
            image_mask: ``(B, N)`` 1 = attend, 0 = padding, over the cross-attention memory (None:
                every token, as for images); taken from ``cache`` when decoding with one.
        """
        if first_token_only and (mode == "decoder" or cache is not None or use_cache):
            raise ValueError("first_token_only is for the encoder modes, without a cache")
        if cache is not None:
            image_kv = [c.image_kv for c in cache]
            image_mask = cache[0].image_mask if image_mask is None else image_mask
        if mode != "text" and image_kv is None:
            if image_embeds is None:
                raise ValueError(f"mode={mode!r} needs image_embeds, image_kv or a cache")
            image_kv = self.image_kv(image_embeds)
        past = 0 if cache is None or cache[0].self_kv is None else cache[0].self_kv[0].shape[2]
        x = self.embeddings(input_ids, position_offset=past)
        decoder = mode == "decoder"
        B, L = input_ids.shape
        if attention_mask is None and decoder and L > 1:
            attention_mask = input_ids.new_ones(B, past + L)  # for the causal mask
        if attention_mask is None:
            mask = None
        elif decoder:
            mask = causal_padding_mask(attention_mask, L)
        else:
            mask = padding_mask(attention_mask)
        cross_mask = padding_mask(image_mask) if image_mask is not None and mode != "text" else None
        new_cache: list[LayerCache] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_image_kv = image_kv[i] if mode != "text" else None
            past_kv = cache[i].self_kv if cache is not None else None
            args = (x, mask, decoder, layer_image_kv, past_kv, first_token_only and i == last, cross_mask)
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, self_kv = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, self_kv = layer(*args)
            if use_cache:
                new_cache.append(LayerCache(self_kv, layer_image_kv, image_mask))
        return MEDOutput(x, new_cache if use_cache else None)
