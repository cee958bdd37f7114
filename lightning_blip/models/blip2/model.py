"""BLIP-2 stage-1 model: a frozen image encoder, ``ln_vision`` and the Q-Former with its heads."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.attention import KeyValue
from lightning_blip.layers.heads import LMHead
from lightning_blip.losses.itc import max_query_similarity
from lightning_blip.models.blip2.config import DTYPES, Blip2Config
from lightning_blip.models.blip2.pretrained import BLIP2_LOADERS
from lightning_blip.models.blip2.qformer import QFormer, QFormerOutput
from lightning_blip.models.shared.pretrained import FromPretrainedMixin
from lightning_blip.models.shared.retrieval import RetrievalMixin
from lightning_blip.models.shared.vision import VisionConfig, VisionEncoder


class FrozenAwareImageEncoder(nn.Module):
    """The image side of BLIP-2: a (frozen) timm ViT followed by the trainable ``ln_vision``.

    Frozen: no gradients, always in eval mode, run under ``no_grad``, and held in
    ``frozen_dtype`` once moved to a GPU (its output is cast back to fp32 for ``ln_vision``).
    """

    def __init__(
        self, vision: VisionConfig, frozen: bool, frozen_dtype: str = "float16", ln_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.visual_encoder = VisionEncoder(vision)
        self.ln_vision = nn.LayerNorm(self.visual_encoder.width, eps=ln_eps)
        self.frozen = frozen
        self.frozen_dtype = DTYPES[frozen_dtype]
        if frozen:
            self.visual_encoder.requires_grad_(False)
            self.visual_encoder.eval()

    @property
    def width(self) -> int:
        return self.visual_encoder.width

    def train(self, mode: bool = True) -> FrozenAwareImageEncoder:
        super().train(mode)
        if self.frozen:
            self.visual_encoder.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.frozen:
            weight = next(self.visual_encoder.parameters())
            if (
                weight.device.type == "cuda"
                and weight.dtype == torch.float32
                and self.frozen_dtype != torch.float32
            ):
                self.visual_encoder.to(self.frozen_dtype)
        return self

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> normalised image features ``(B, 1 + N, D)`` (fp32 out of ``ln_vision``)."""
        if not self.frozen:
            return self.ln_vision(self.visual_encoder(pixel_values))
        dtype = next(self.visual_encoder.parameters()).dtype
        with torch.no_grad():
            features = self.visual_encoder(pixel_values.to(dtype))
        return self.ln_vision(features.float())


class Blip2Model(RetrievalMixin, FromPretrainedMixin, nn.Module):
    """BLIP-2 stage 1: frozen ViT, ``ln_vision``, Q-Former, ITC projections, ITM head, ITG LM head.

    No Lightning here: use it for query features, ITC similarities and ITM scores (``itc_similarity``,
    ``itm_score``, :func:`~lightning_blip.models.shared.retrieval.rerank`).
    """

    config_class = Blip2Config
    pretrained_loaders = BLIP2_LOADERS

    def __init__(self, config: Blip2Config | None = None) -> None:
        super().__init__()
        config = config or Blip2Config()
        self.image_encoder = FrozenAwareImageEncoder(
            config.vision, config.freeze_vision, config.frozen_vision_dtype, config.ln_vision_eps
        )
        config = replace(config, qformer=replace(config.qformer, encoder_width=self.image_encoder.width))
        self.config = config
        self.qformer = QFormer(config.qformer)
        D = config.qformer.hidden_size
        self.vision_proj = nn.Linear(D, config.embed_dim)
        self.text_proj = nn.Linear(D, config.embed_dim)
        self.itm_head = nn.Linear(D, 2)
        self.lm_head = LMHead(self.qformer.embeddings.word_embeddings, config.qformer.layer_norm_eps)
        self.temp = nn.Parameter(torch.full((1,), config.temperature))  # (1,): FSDP2 shards no 0-d tensors
        for head in (self.vision_proj, self.text_proj, self.itm_head):
            nn.init.normal_(head.weight, std=config.qformer.initializer_range)
            nn.init.zeros_(head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay."""
        return {"temp"} | {f"qformer.{n}" for n in self.qformer.no_weight_decay()}

    # image side ---------------------------------------------------------------------------------
    def forward_image(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> image features after ``ln_vision`` ``(B, 1 + N, Dv)``."""
        return self.image_encoder(pixel_values)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Same as :meth:`forward_image` (the entry point that wrappers such as FSDP hook)."""
        return self.forward_image(pixel_values)

    def image_kv(self, image_embeds: Tensor) -> list[KeyValue | None]:
        """The Q-Former's cross-attention keys/values of ``image_embeds``; compute once per image."""
        return self.qformer.image_kv(image_embeds)

    def query_output(
        self, image_embeds: Tensor | None = None, image_kv: list | None = None, use_cache: bool = False
    ) -> QFormerOutput:
        """The queries alone over the image: ``(B, Q, D)`` (+ their keys/values for ITG)."""
        return self.qformer(image_embeds=image_embeds, image_kv=image_kv, use_cache=use_cache)

    def image_features(self, query_hidden: Tensor, normalize: bool = True) -> Tensor:
        """Query outputs ``(B, Q, D)`` -> ITC features ``(B, Q, E)``."""
        feats = self.vision_proj(query_hidden)
        return F.normalize(feats, dim=-1) if normalize else feats

    def text_features(self, text_hidden: Tensor, normalize: bool = True) -> Tensor:
        """[CLS] of unimodal text states ``(B, L, D)`` -> ITC features ``(B, E)``."""
        feat = self.text_proj(text_hidden[:, 0])
        return F.normalize(feat, dim=-1) if normalize else feat

    def encode_image(self, pixel_values: Tensor, normalize: bool = True) -> Tensor:
        """Images ``(B, 3, H, W)`` -> per-query ITC features ``(B, Q, E)``."""
        return self.encode_image_embeds(self.forward_image(pixel_values), normalize)

    def encode_image_embeds(self, image_embeds: Tensor, normalize: bool = True) -> Tensor:
        """Image features ``(B, 1 + N, Dv)`` from :meth:`forward_image` -> per-query ITC features ``(B, Q, E)``."""
        return self.image_features(self.query_output(image_embeds).last_hidden_state, normalize)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
        """Token ids ``(B, L)`` ([CLS] first) -> ITC features ``(B, E)``."""
        hidden = self.qformer(
            input_ids, attention_mask, queries=False, first_token_only=True
        ).last_hidden_state
        return self.text_features(hidden, normalize)

    def similarity(self, image_feats: Tensor, text_feats: Tensor) -> Tensor:
        """ITC similarity ``(I, T)`` (before the temperature): max over each image's queries."""
        return max_query_similarity(image_feats, text_feats)

    # image-grounded passes --------------------------------------------------------------------
    def itm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list | None = None,
    ) -> Tensor:
        """ITM logits ``(B, 2)`` (index 1 = match): the head on each query output, averaged over queries."""
        hidden = self.qformer(input_ids, attention_mask, image_embeds=image_embeds, image_kv=image_kv)
        return self.itm_head(hidden.last_hidden_state[:, : self.config.qformer.num_query_tokens]).mean(dim=1)

    def decoder_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        query_cache: list[KeyValue] | None = None,
        image_embeds: Tensor | None = None,
        image_kv: list | None = None,
    ) -> Tensor:
        """ITG text states ``(B, L, D)`` ([DEC] first) under the multimodal-causal mask.

        With ``query_cache`` (keys/values of a query pass) only the text is run; otherwise one pass
        over ``[queries; text]``.
        """
        input_ids = input_ids.clone()
        input_ids[:, 0] = self.config.bos_token_id
        if query_cache is not None:
            return self.qformer(
                input_ids, attention_mask, queries=False, causal=True, query_cache=query_cache
            ).last_hidden_state
        hidden = self.qformer(
            input_ids, attention_mask, image_embeds=image_embeds, image_kv=image_kv, causal=True
        )
        return hidden.last_hidden_state[:, self.config.qformer.num_query_tokens :]
