"""The BLIP-2 Q-Former: a BERT-shaped transformer whose learnable queries read a frozen image encoder.

Queries and text share the self-attention layers; only the queries pass through cross-attention
(every ``cross_attention_freq``-th layer) and they have their own feed-forward sublayers. Which
tokens see which is set by the self-attention mask of each objective:

- unimodal (ITC): queries alone, or text alone, in separate passes;
- bidirectional (ITM): ``[queries; text]`` all see each other;
- multimodal-causal (ITG): queries see the queries; text sees every query and the text before it.
  The efficient form keeps the keys/values of the query pass (``use_cache``) and runs the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_blip.layers.attention import (
    AttentionSublayer,
    FeedForward,
    KeyValue,
    causal_padding_mask,
    padding_mask,
)
from lightning_blip.layers.init import bert_init_


@dataclass
class QFormerConfig:
    """Q-Former configuration (defaults: the paper's BERT-base Q-Former reading EVA ViT-g).

    Attributes:
        vocab_size: bert-base-uncased's 30522 + [DEC].
        hidden_size: width D.
        num_layers: transformer layers.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        max_position_embeddings: longest text.
        encoder_width: width of the image features that cross-attention reads (1408: ViT-g).
        cross_attention_freq: layers 0, f, 2f, ... have cross-attention to the image.
        num_query_tokens: learnable queries.
        text: build the text parts (word/position embeddings, text FFN). Stage 2 reads only the
            queries and drops them, as LAVIS does.
        dropout: hidden dropout.
        attention_dropout: dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: padding id of the tokenizer.
        initializer_range: std of the normal initialisation (queries included).
        grad_checkpointing: recompute each layer in backward.
    """

    vocab_size: int = 30523
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    encoder_width: int = 1408
    cross_attention_freq: int = 2
    num_query_tokens: int = 32
    text: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.cross_attention_freq < 1:
            raise ValueError(f"qformer.cross_attention_freq must be >= 1, got {self.cross_attention_freq}")
        if self.num_query_tokens < 1:
            raise ValueError(f"qformer.num_query_tokens must be >= 1, got {self.num_query_tokens}")


class QFormerOutput(NamedTuple):
    """Q-Former output.

    Attributes:
        last_hidden_state: ``(B, Q + L, D)`` over the tokens of this pass (queries first).
        cache: per-layer self-attention keys/values of this pass when ``use_cache`` was set.
    """

    last_hidden_state: Tensor
    cache: list[KeyValue] | None


def multimodal_causal_mask(num_queries: int, text_mask: Tensor) -> Tensor:
    """The ITG mask over ``[queries; text]``: boolean ``(B, 1, Q + L, Q + L)``, True = attend.

    Queries see every query and no text; text token t sees every query and text tokens <= t
    (padding excluded). ``text_mask`` is ``(B, L)`` 1/0.
    """
    B, L = text_mask.shape
    queries = torch.ones(B, num_queries, dtype=text_mask.dtype, device=text_mask.device)
    keys = torch.cat([queries, text_mask], dim=1)
    text_rows = causal_padding_mask(keys, L)  # (B, 1, L, Q + L): queries precede every text row
    query_rows = torch.zeros(B, 1, num_queries, num_queries + L, dtype=torch.bool, device=keys.device)
    query_rows[..., :num_queries] = True
    return torch.cat([query_rows, text_rows], dim=2)


class QFormerEmbeddings(nn.Module):
    """Text: word + absolute position embeddings; queries: none. Then LayerNorm and dropout on both."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        if config.text:
            self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: Tensor | None, input_ids: Tensor | None) -> Tensor:
        """Queries ``(B, Q, D)`` and/or ids ``(B, L)`` -> ``(B, Q + L, D)``; text positions start at 0."""
        parts = [] if queries is None else [queries]
        if input_ids is not None:
            if not hasattr(self, "word_embeddings"):
                raise ValueError("this Q-Former has no text embeddings (QFormerConfig.text=False)")
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        return self.dropout(self.norm(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]))


class QFormerLayer(nn.Module):
    """Shared self-attention; cross-attention and a separate FFN for the queries; FFN for the text."""

    def __init__(self, config: QFormerConfig, cross_attention: bool) -> None:
        super().__init__()
        D, H = config.hidden_size, config.num_heads
        kw = {
            "dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            "eps": config.layer_norm_eps,
        }
        self.self_attn = AttentionSublayer(D, H, **kw)
        self.cross_attn = (
            AttentionSublayer(D, H, kv_dim=config.encoder_width, **kw) if cross_attention else None
        )
        self.ffn_query = FeedForward(D, config.intermediate_size, config.dropout, config.layer_norm_eps)
        self.ffn = (
            FeedForward(D, config.intermediate_size, config.dropout, config.layer_norm_eps)
            if config.text
            else None
        )

    def forward(
        self,
        x: Tensor,
        num_queries: int,
        mask: Tensor | None,
        image_kv: KeyValue | None,
        past_kv: KeyValue | None = None,
        first_token_only: bool = False,
        image_embeds: Tensor | None = None,
    ) -> tuple[Tensor, KeyValue]:
        """``(B, Q + L, D)`` -> ``(B, Q + L, D)`` and this layer's self-attention keys/values.

        The queries read the image through its cross-attention keys/values ``image_kv`` or, when
        those are None, from ``image_embeds`` directly. ``first_token_only`` (text-only passes):
        only position 0 is computed, giving ``(B, 1, D)``.
        """
        if first_token_only:
            x, kv = self.self_attn(x[:, :1], context=x, attn_mask=mask)
        else:
            x, kv = self.self_attn(x, past_kv=past_kv, attn_mask=mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if num_queries:
            if self.cross_attn is not None:
                if image_kv is None and image_embeds is None:
                    raise ValueError("a pass with queries needs the image (image_embeds or image_kv)")
                queries, _ = self.cross_attn(queries, kv=image_kv, context=image_embeds)
            queries = self.ffn_query(queries)
        if text.shape[1]:
            if self.ffn is None:
                raise ValueError("this Q-Former has no text FFN (QFormerConfig.text=False)")
            text = self.ffn(text)
            return (torch.cat([queries, text], dim=1) if num_queries else text), kv
        return queries, kv


class QFormer(nn.Module):
    """Learnable queries + a BERT-shaped transformer with cross-attention to image features."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        self.embeddings = QFormerEmbeddings(config)
        self.layers = nn.ModuleList(
            QFormerLayer(config, cross_attention=i % config.cross_attention_freq == 0)
            for i in range(config.num_layers)
        )
        bert_init_(self, self.config.initializer_range)
        nn.init.normal_(self.query_tokens, std=config.initializer_range)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that take no weight decay."""
        names = {"query_tokens"}
        if self.config.text:
            names |= {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"}
        return names

    def image_kv(self, image_embeds: Tensor) -> list[KeyValue | None]:
        """Cross-attention keys/values ``(B, H, N, Dh)`` per layer (None where a layer has none).

        Compute once per image; index the batch dimension to pair images with other texts.
        """
        return [
            None if layer.cross_attn is None else layer.cross_attn.attention.kv(image_embeds)
            for layer in self.layers
        ]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue | None] | None = None,
        queries: bool = True,
        causal: bool = False,
        query_cache: list[KeyValue] | None = None,
        use_cache: bool = False,
        first_token_only: bool = False,
    ) -> QFormerOutput:
        """Run the Q-Former over ``[queries; text]``, either part optional.

        Args:
            input_ids: ``(B, L)`` text ids, or None for a query-only pass.
            attention_mask: ``(B, L)`` 1/0 text padding mask (default: all ones).
            image_embeds: ``(B, N, encoder_width)`` image features, read once by this pass (the
                cross-attention never materialises their keys/values), or
            image_kv: their precomputed keys/values from :meth:`image_kv`, for an image that
                several passes read (stage 1: ITC and ITM).
            queries: include the learnable queries in this pass.
            causal: multimodal-causal mask (ITG) instead of bidirectional.
            query_cache: keys/values of an earlier query pass (``use_cache=True``); this pass then
                runs the text only, attending to the cached queries (the efficient ITG).
            use_cache: return the per-layer self-attention keys/values.
            first_token_only: text-only passes: the last layer computes position 0 only ([CLS] for
                ITC), so ``last_hidden_state`` is ``(B, 1, D)``.
        """
        if input_ids is None and not queries:
            raise ValueError("a Q-Former pass needs queries, text or both")
        if query_cache is not None and queries:
            raise ValueError("with query_cache the queries come from the cache: pass queries=False")
        if first_token_only and (queries or query_cache is not None or causal):
            raise ValueError("first_token_only is for text-only, non-causal passes")
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = input_ids.shape[0] if input_ids is not None else None
        if queries and image_kv is None:  # the image is read once: cross-attention from image_embeds
            if image_embeds is None:
                raise ValueError("a pass with queries needs image_embeds or image_kv")
            batch = image_embeds.shape[0] if batch is None else batch
        elif queries and batch is None:
            batch = next(kv[0].shape[0] for kv in image_kv if kv is not None)
        query_embeds = self.query_tokens.expand(batch, -1, -1) if queries else None
        num_queries = self.config.num_query_tokens if queries else 0
        x = self.embeddings(query_embeds, input_ids)
        mask = self._mask(num_queries, attention_mask, causal, query_cache is not None, x.shape[0], x.device)

        new_cache: list[KeyValue] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_kv = image_kv[i] if queries and image_kv is not None else None
            past_kv = query_cache[i] if query_cache is not None else None
            embeds = image_embeds if queries and image_kv is None else None
            args = (x, num_queries, mask, layer_kv, past_kv, first_token_only and i == last, embeds)
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, kv = layer(*args)
            new_cache.append(kv)
        return QFormerOutput(x, new_cache if use_cache else None)

    def _mask(
        self,
        num_queries: int,
        text_mask: Tensor | None,
        causal: bool,
        cached_queries: bool,
        batch: int,
        device: torch.device,
    ) -> Tensor | None:
        """The self-attention mask of one pass (None: every token sees every token)."""
        if text_mask is None:  # queries only
            return None
        q = self.config.num_query_tokens if cached_queries else num_queries
        ones = torch.ones(batch, q, dtype=text_mask.dtype, device=device)
        keys = torch.cat([ones, text_mask], dim=1)
        if cached_queries:  # text rows after cached queries: causal (ITG) or bidirectional
            return causal_padding_mask(keys, text_mask.shape[1]) if causal else padding_mask(keys)
        if causal and num_queries:
            return multimodal_causal_mask(num_queries, text_mask)
        if causal:
            return causal_padding_mask(text_mask, text_mask.shape[1])
        return padding_mask(keys)
