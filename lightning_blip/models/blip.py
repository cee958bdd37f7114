"""BLIP's MED model: ViT image encoder, MED text transformer, ITC/ITM/LM heads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.attention import KeyValue
from lightning_blip.layers.heads import LMHead
from lightning_blip.models.med import LayerCache, MEDConfig, MEDTextModel
from lightning_blip.models.vision import VisionConfig, VisionEncoder


@dataclass
class BlipConfig:
    """Configuration of :class:`BlipModel`.

    Attributes:
        vision: the timm ViT.
        text: the MED text transformer (``encoder_width`` is set to the ViT's width).
        embed_dim: width of the ITC space.
        temperature: initial ITC temperature.
        bos_token_id: [DEC], the decoder's first token.
        enc_token_id: [ENC], the image-grounded encoder's first token.
        sep_token_id: [SEP], end of text.
        pad_token_id: [PAD].
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: MEDConfig = field(default_factory=MEDConfig)
    embed_dim: int = 256
    temperature: float = 0.07
    bos_token_id: int = 30522
    enc_token_id: int = 30523
    sep_token_id: int = 102
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> BlipConfig:
        """Rebuild from :func:`dataclasses.asdict` output (checkpoints keep configs as plain dicts)."""
        values = dict(values)
        vision = VisionConfig(**values.pop("vision", {}))
        text = MEDConfig(**values.pop("text", {}))
        return cls(vision=vision, text=text, **values)


class BlipModel(nn.Module):
    """BLIP MED: one set of weights for the unimodal encoders, the image-grounded encoder and decoder.

    No Lightning here: use it directly for feature extraction, ITM scoring or captioning.
    """

    def __init__(self, config: BlipConfig | None = None) -> None:
        super().__init__()
        config = config or BlipConfig()
        self.visual_encoder = VisionEncoder(config.vision)
        config = replace(config, text=replace(config.text, encoder_width=self.visual_encoder.width))
        self.config = config
        self.text = MEDTextModel(config.text)
        D, E = config.text.hidden_size, config.embed_dim
        self.vision_proj = nn.Linear(self.visual_encoder.width, E)
        self.text_proj = nn.Linear(D, E)
        self.itm_head = nn.Linear(D, 2)
        self.lm_head = LMHead(self.text.embeddings.word_embeddings, config.text.layer_norm_eps)
        # shape (1,), not a scalar: FSDP2 cannot shard 0-d parameters
        self.temp = nn.Parameter(torch.full((1,), config.temperature))
        for module in (self.vision_proj, self.text_proj, self.itm_head, self.lm_head.dense):
            nn.init.normal_(module.weight, std=config.text.initializer_range)
            nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay besides biases and norms."""
        names = {"temp"}
        names |= {f"visual_encoder.{n}" for n in self.visual_encoder.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names

    # feature extraction -------------------------------------------------------------------
    def forward_image(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> image tokens ``(B, 1 + N, Dv)``."""
        return self.visual_encoder(pixel_values)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Same as :meth:`forward_image` (the entry point that wrappers such as FSDP hook)."""
        return self.forward_image(pixel_values)

    def image_features(self, image_embeds: Tensor, normalize: bool = True) -> Tensor:
        """Projected [CLS] of image tokens ``(B, 1 + N, Dv)`` -> ``(B, E)``."""
        feat = self.vision_proj(image_embeds[:, 0])
        return F.normalize(feat, dim=-1) if normalize else feat

    def text_features(self, text_hidden: Tensor, normalize: bool = True) -> Tensor:
        """Projected [CLS] of unimodal text states ``(B, L, D)`` -> ``(B, E)``."""
        feat = self.text_proj(text_hidden[:, 0])
        return F.normalize(feat, dim=-1) if normalize else feat

    def encode_image(self, pixel_values: Tensor, normalize: bool = True) -> Tensor:
        """Images ``(B, 3, H, W)`` -> ITC features ``(B, E)``."""
        return self.image_features(self.forward_image(pixel_values), normalize)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
        """Token ids ``(B, L)`` ([CLS] first) -> ITC features ``(B, E)``."""
        hidden = self.text(input_ids, attention_mask, mode="text", first_token_only=True).last_hidden_state
        return self.text_features(hidden, normalize)

    # image-grounded passes --------------------------------------------------------------------
    def image_kv(self, image_embeds: Tensor) -> list[KeyValue]:
        """Per-layer cross-attention keys/values of image tokens; compute once, reuse per text."""
        return self.text.image_kv(image_embeds)

    def _grounded(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        first_token: int,
        mode: str,
        image_embeds: Tensor | None,
        image_kv: list[KeyValue] | None,
        first_token_only: bool = False,
    ) -> Tensor:
        """Image-grounded pass with the first token replaced by [ENC] or [DEC] -> ``(B, L, D)``.

        ``first_token_only``: ``(B, 1, D)``, see :meth:`MEDTextModel.forward`.
        """
        input_ids = input_ids.clone()
        input_ids[:, 0] = first_token
        return self.text(
            input_ids,
            attention_mask,
            mode=mode,
            image_embeds=image_embeds,
            image_kv=image_kv,
            first_token_only=first_token_only,
        ).last_hidden_state

    def itm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue] | None = None,
    ) -> Tensor:
        """Image-text matching logits ``(B, 2)`` (index 1 = match).

        The first token ([CLS]) is replaced by [ENC], as BLIP's image-grounded encoder does.
        """
        cfg = self.config
        hidden = self._grounded(
            input_ids, attention_mask, cfg.enc_token_id, "multimodal", image_embeds, image_kv, True
        )
        return self.itm_head(hidden[:, 0])

    def lm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue] | None = None,
    ) -> Tensor:
        """Decoder logits ``(B, L, V)``; position t predicts token t + 1.

        The first token is replaced by [DEC] (BLIP's bos).
        """
        return self.lm_head(self.decoder_states(input_ids, attention_mask, image_embeds, image_kv))

    def decoder_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue] | None = None,
    ) -> Tensor:
        """Decoder hidden states ``(B, L, D)`` with [DEC] first (before the LM head)."""
        cfg = self.config
        return self._grounded(input_ids, attention_mask, cfg.bos_token_id, "decoder", image_embeds, image_kv)

    def decode_step(
        self, input_ids: Tensor, attention_mask: Tensor, cache: list[LayerCache]
    ) -> tuple[Tensor, list[LayerCache]]:
        """One cached decoding step: new ids ``(B, T)`` -> next-token logits ``(B, V)`` and the cache.

        ``attention_mask`` ``(B, S)`` covers the cached and the new tokens.
        """
        out = self.text(input_ids, attention_mask, mode="decoder", cache=cache, use_cache=True)
        return self.lm_head(out.last_hidden_state[:, -1]), out.cache

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        tokenizer,
        prompt: str = "a picture of ",
        max_length: int = 20,
        min_length: int = 5,
    ) -> list[str]:
        """Caption images ``(B, 3, H, W)`` greedily (prompt "a picture of ", as BLIP's captioner)."""
        from lightning_blip.models.generation import decode_captions, greedy_decode

        image_embeds = self.forward_image(pixel_values)
        prompt_ids = tokenizer([prompt] * len(pixel_values), return_tensors="pt").input_ids[:, :-1]
        ids = greedy_decode(self, image_embeds, prompt_ids.to(pixel_values.device), max_length, min_length)
        return decode_captions(tokenizer, ids, prompt)

    def start_decoding(self, image_embeds: Tensor) -> list[LayerCache]:
        """An empty decoding cache holding the image's cross-attention keys/values."""
        return [LayerCache(None, kv) for kv in self.image_kv(image_embeds)]
