"""BLIP's MED model: ViT image encoder, MED text transformer, ITC/ITM/LM heads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.layers.attention import KeyValue, LayerCache
from lightning_blip.layers.heads import LMHead
from lightning_blip.models.blip.config import BlipConfig
from lightning_blip.models.blip.med import MEDTextModel
from lightning_blip.models.blip.pretrained import BLIP_LOADERS
from lightning_blip.models.shared.pretrained import FromPretrainedMixin
from lightning_blip.models.shared.retrieval import RetrievalMixin
from lightning_blip.models.shared.vision import VisionEncoder
from lightning_blip.weights.keymap import LoadReport


class BlipModel(RetrievalMixin, FromPretrainedMixin, nn.Module):
    """BLIP MED: one set of weights for the unimodal encoders, the image-grounded encoder and decoder.

    No Lightning here: use it directly for feature extraction, retrieval (``itc_similarity``,
    ``itm_score``, :func:`~lightning_blip.models.shared.retrieval.rerank`) or captioning.
    """

    config_class = BlipConfig
    pretrained_loaders = BLIP_LOADERS

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

    def encode_image_embeds(self, image_embeds: Tensor, normalize: bool = True) -> Tensor:
        """Image tokens ``(B, 1 + N, Dv)`` from :meth:`forward_image` -> ITC features ``(B, E)``."""
        return self.image_features(image_embeds, normalize)

    def similarity(self, image_feats: Tensor, text_feats: Tensor) -> Tensor:
        """ITC similarity ``(I, T)`` of features ``(I, E)`` and ``(T, E)`` (before the temperature)."""
        return image_feats @ text_feats.t()

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
        self, input_ids: Tensor, attention_mask: Tensor | None, cache: list[LayerCache]
    ) -> tuple[Tensor, list[LayerCache]]:
        """One cached decoding step: new ids ``(B, T)`` -> next-token logits ``(B, V)`` and the cache.

        ``attention_mask`` ``(B, S)`` covers the cached and the new tokens (None: no padding).
        """
        out = self.text(input_ids, attention_mask, mode="decoder", cache=cache, use_cache=True)
        return self.lm_head(out.last_hidden_state[:, -1]), out.cache

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        tokenizer=None,
        prompt: str = "a picture of ",
        num_beams: int = 3,
        max_length: int = 20,
        min_length: int = 5,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        top_p: float | None = None,
        top_k: int = 50,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> list[str]:
        """Caption images ``(B, 3, H, W)`` -> ``B`` strings without the prompt.

        Defaults are BLIP's COCO captioner: prompt "a picture of ", beam search with 3 beams, at
        most 20 and at least 5 tokens counting [DEC] and the prompt. ``top_p`` set: nucleus sampling
        instead (``num_beams`` ignored, as BLIP's ``generate(sample=True)``); BLIP samples with
        ``top_p=0.9`` and a hard-coded ``repetition_penalty=1.1`` (LAVIS: 1.0), and inherits
        transformers' default ``top_k=50`` (0 turns it off). See
        :func:`~lightning_blip.models.shared.generation.generate_ids` for the exact semantics.
        """
        from lightning_blip.models.shared.generation import decode_captions, generate_ids
        from lightning_blip.models.shared.tokenizer import default_tokenizer

        tokenizer = default_tokenizer() if tokenizer is None else tokenizer  # the bundled vocabulary
        image_embeds = self.forward_image(pixel_values)
        prompt_ids = tokenizer([prompt] * len(pixel_values), return_tensors="pt").input_ids[:, :-1]
        sample = top_p is not None
        ids = generate_ids(
            self,
            image_embeds,
            prompt_ids.to(pixel_values.device),
            num_beams=1 if sample else num_beams,
            max_length=max_length,
            min_length=min_length,
            length_penalty=length_penalty,
            repetition_penalty=repetition_penalty,
            do_sample=sample,
            top_p=top_p if sample else 1.0,
            top_k=top_k if sample else 0,
            temperature=temperature,
            generator=generator,
            use_cache=use_cache,
        )
        return decode_captions(tokenizer, ids, prompt)

    def start_decoding(self, image_embeds: Tensor) -> list[LayerCache]:
        """An empty decoding cache holding the image's cross-attention keys/values."""
        return [LayerCache(None, kv) for kv in self.image_kv(image_embeds)]

    # captioning loss and initialisation --------------------------------------------------------
    def lm_loss(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue] | None = None,
        prompt_length: int = 0,
        label_smoothing: float = 0.1,
    ) -> tuple[Tensor, Tensor]:
        """Decoder cross entropy of captions ``(B, L)``: ``(sum over scored tokens, their count)``.

        Padding and the first ``prompt_length`` tokens are not scored (BLIP's captioner: "[DEC] a
        picture of" = 4); label smoothing 0.1 as BLIP's decoder. The LM head runs on scored
        positions only. Divide the sum by the count (gathered over ranks) for the mean.
        """
        from lightning_blip.losses.lm import lm_labels, scored_positions, token_cross_entropy

        labels = lm_labels(input_ids, attention_mask, prompt_length)
        scored = scored_positions(labels)
        hidden = self.decoder_states(input_ids, attention_mask, image_embeds, image_kv)
        logits = self.lm_head(hidden[:, :-1][scored])
        total = token_cross_entropy(logits, labels[:, 1:][scored], label_smoothing, reduction="sum")
        return total, scored.sum()

    def load_pretrained(self, source: str | Path | dict[str, Tensor]) -> LoadReport:
        """Initialise every weight from a pretrained MED; the report names the source keys not used
        (``ignored``).

        ``source``: a weights file (safetensors or torch, a Lightning checkpoint included) or a state
        dict with :class:`BlipModel` keys, possibly under ``model.blip.`` (``MEDPretrain``) or
        ``model.`` (a fine-tuning task). The ViT's position embeddings are interpolated to this
        image size (224-px pretraining -> 384-px fine-tuning). Momentum encoders and queues of a
        pretraining checkpoint are among the unused keys.

        Raises:
            KeyError: a weight of this model is missing from ``source`` (named).
            ValueError: a text-side weight has another shape (key and both shapes named).
        """
        from lightning_blip.weights.checkpoint_io import load_state_dict_file

        state = source if isinstance(source, dict) else load_state_dict_file(source)
        state = {k.removeprefix("model.").removeprefix("blip."): v for k, v in state.items()}
        prefix = "visual_encoder."
        vision = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        self.visual_encoder.load_vit_state_dict(vision, strict=True, source="pretrained weights")
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(prefix)}
        missing = [k for k in own if k not in state]
        if missing:
            raise KeyError(f"pretrained weights lack {len(missing)} keys, e.g. {missing[:5]}")
        for key, value in own.items():
            if state[key].shape != value.shape:
                raise ValueError(
                    f"pretrained weight {key!r} has shape {tuple(state[key].shape)}, "
                    f"this model's has {tuple(value.shape)}"
                )
        self.load_state_dict({k: state[k] for k in own}, strict=False)
        loaded = sorted([*own, *(prefix + k for k in vision)])
        return LoadReport(
            loaded=loaded, ignored=sorted(k for k in state if k not in own and not k.startswith(prefix))
        )
