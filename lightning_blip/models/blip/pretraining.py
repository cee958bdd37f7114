"""BLIP pretraining: the MED model, its momentum copies, the ITC queues and the three losses."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_blip.losses.gather import (
    all_gather_no_grad,
    all_reduce_sum,
    rank_and_world,
)
from lightning_blip.losses.itc import itc_loss, itc_targets
from lightning_blip.losses.itm import NegativeSampler, itm_inputs, itm_loss
from lightning_blip.models.blip.config import BlipConfig
from lightning_blip.models.blip.med import MEDTextModel
from lightning_blip.models.blip.model import BlipModel
from lightning_blip.models.shared.positives import PositivePairs, Positives
from lightning_blip.models.shared.vision import VisionEncoder

MiningFeatures = Literal["momentum", "online"]


class PretrainingOutput(NamedTuple):
    """Losses of one pretraining step (scalars), the temperature used and the ITM negatives chosen
    (``(B,)`` indices into the local or global pool)."""

    loss_itc: Tensor
    loss_itm: Tensor
    loss_lm: Tensor
    temp: Tensor
    neg_text_idx: Tensor
    neg_image_idx: Tensor


class BlipForPretraining(PositivePairs, nn.Module):
    """ITC + ITM + LM pretraining of :class:`BlipModel` (one ViT forward, three text passes per pair).

    Holds the momentum encoders (frozen EMA copies of the ViT, ``vision_proj``, the unimodal text
    encoder and ``text_proj``) and the ITC queues as buffers, so both are moved, sharded and
    checkpointed with the model. The EMA update is :meth:`momentum_update`, called after each
    optimiser step (the ``MomentumEncoder`` callback does this under Lightning).

    Args:
        config: the MED model.
        queue_size: entries in each ITC queue (BLIP: 57,600).
        gather_keys: use every rank's momentum features of the current batch as ITC keys, so that
            W ranks behave like one rank with the global batch. False reproduces salesforce/BLIP,
            whose current-batch keys are the local batch only (other ranks reach it through the
            queue one step later).
        positives: which keys are ITC positives of a pair: ``"pair"`` (its own, BLIP
            pretraining), ``"image_id"`` (every pair of the same image, BLIP retrieval) or
            ``"caption"`` (every pair with the same text, for data whose captions repeat).
        lm_loss: compute the LM loss. False skips the decoder pass, returns ``loss_lm`` = 0 and
            fixes :meth:`decoder_parameters`: ITC + ITM only, as BLIP's retrieval fine-tuning.
        mining_features: the ITC features whose similarities weight the ITM hard negatives:
            ``"momentum"`` (the online query against the momentum features of the pool, BLIP
            pretraining) or ``"online"`` (online features on both sides, BLIP retrieval).
    """

    def __init__(
        self,
        config: BlipConfig | None = None,
        queue_size: int = 57600,
        gather_keys: bool = True,
        positives: Positives = "pair",
        lm_loss: bool = True,
        mining_features: MiningFeatures = "momentum",
    ) -> None:
        super().__init__()
        if positives not in ("pair", "image_id", "caption"):
            raise ValueError(f"positives must be 'pair', 'image_id' or 'caption', got {positives!r}")
        if mining_features not in ("momentum", "online"):
            raise ValueError(f"mining_features must be 'momentum' or 'online', got {mining_features!r}")
        self.lm_loss = lm_loss
        self.mining_features = mining_features
        self.blip = BlipModel(config)
        config = self.blip.config
        self.queue_size = queue_size
        self.gather_keys = gather_keys
        self.positives = positives
        self.visual_encoder_m = VisionEncoder(replace(config.vision, weights=None, drop_path=0.0))
        self.vision_proj_m = nn.Linear(self.blip.visual_encoder.width, config.embed_dim)
        self.text_m = MEDTextModel(replace(config.text, cross_attention=False, decoder=False))
        self.text_proj_m = nn.Linear(config.text.hidden_size, config.embed_dim)
        for module in self.momentum_modules().values():
            module.requires_grad_(False)
        if not lm_loss:
            for param in self.decoder_parameters():
                param.requires_grad_(False)
        self.copy_to_momentum()
        E = config.embed_dim
        self.register_buffer("image_queue", F.normalize(torch.randn(E, queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(E, queue_size), dim=0))
        self.register_buffer("id_queue", torch.full((queue_size,), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters only the LM loss uses: the decoder's causal self-attention and the LM head (its
        output weight is the word embedding, shared, so not included). Fixed when ``lm_loss=False``,
        which DDP needs (every trainable parameter must get a gradient)."""
        blip = self.blip
        params = [
            p
            for layer in blip.text.layers
            if layer.decoder_self_attn is not None
            for p in layer.decoder_self_attn.parameters()
        ]
        params += [
            *blip.lm_head.dense.parameters(),
            *blip.lm_head.norm.parameters(),
            blip.lm_head.decoder.bias,
        ]
        return params

    # momentum encoders ---------------------------------------------------------------------------
    def momentum_modules(self) -> dict[str, nn.Module]:
        """Online module name -> its momentum copy."""
        return {
            "visual_encoder": self.visual_encoder_m,
            "vision_proj": self.vision_proj_m,
            "text": self.text_m,
            "text_proj": self.text_proj_m,
        }

    def momentum_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(online, momentum) parameter pairs, matched by name."""
        pairs = []
        for name, momentum in self.momentum_modules().items():
            online = dict(getattr(self.blip, name).named_parameters())
            pairs += [(online[n], p) for n, p in momentum.named_parameters()]
        return pairs

    @torch.no_grad()
    def copy_to_momentum(self) -> None:
        """Initialise the momentum copies with the online weights."""
        for online, momentum in self.momentum_pairs():
            momentum.copy_(online)

    @torch.no_grad()
    def momentum_update(self, momentum: float = 0.995) -> None:
        """EMA step ``p_m = momentum * p_m + (1 - momentum) * p`` (works on sharded DTensors too)."""
        for online, param_m in self.momentum_pairs():
            param_m.lerp_(online.detach(), 1.0 - momentum)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Clamp the learnable temperature to [0.001, 0.5] in place, as BLIP does each step."""
        self.blip.temp.clamp_(0.001, 0.5)

    @torch.no_grad()
    def _momentum_features(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor):
        image_m = F.normalize(self.vision_proj_m(self.visual_encoder_m(pixel_values)[:, 0]), dim=-1)
        text_hidden = self.text_m(
            input_ids, attention_mask, mode="text", first_token_only=True
        ).last_hidden_state
        return image_m, F.normalize(self.text_proj_m(text_hidden[:, 0]), dim=-1)

    @torch.no_grad()
    def _enqueue(self, image_feat: Tensor, text_feat: Tensor, ids: Tensor) -> None:
        """Write the gathered momentum features ``(W * B, E)`` over the oldest queue entries."""
        n = image_feat.shape[0]
        slots = (self.queue_ptr + torch.arange(n, device=ids.device)) % self.queue_size
        self.image_queue[:, slots] = image_feat.t().to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feat.t().to(self.text_queue.dtype)
        self.id_queue[slots] = ids
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)

    def retrieval_features(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Normalised ITC features of images and texts, each ``(B, E)`` (for evaluation)."""
        return self.blip.encode_image(pixel_values), self.blip.encode_text(input_ids, attention_mask)

    # the step --------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_ids: Tensor | None = None,
        alpha: float = 0.4,
        negative_sampler: NegativeSampler | None = None,
    ) -> PretrainingOutput:
        """Compute ITC, ITM and LM losses for a batch of pairs and update the queues.

        Args:
            pixel_values: ``(B, 3, H, W)``.
            input_ids: ``(B, L)`` tokens starting with [CLS]; the ITM pass swaps in [ENC] and the
                LM pass [DEC].
            attention_mask: ``(B, L)``.
            image_ids: ``(B,)`` integer image ids (for ``positives="image_id"``).
            alpha: momentum distillation weight of this step (ramped by the caller).
            negative_sampler: how ITM negatives are chosen (default: sampled from the local batch).
        """
        sampler = negative_sampler or NegativeSampler()
        blip = self.blip
        rank, world = rank_and_world()
        B = input_ids.shape[0]
        temp = blip.temp.clamp(0.001, 0.5)

        image_embeds = blip.forward_image(pixel_values)
        image_feat = blip.image_features(image_embeds)
        text_hidden = blip.text(
            input_ids, attention_mask, mode="text", first_token_only=True
        ).last_hidden_state
        text_feat = blip.text_features(text_hidden)

        # ITC against [momentum keys of the batch ; queue]
        ids = self.positive_ids(input_ids, image_ids)
        image_feat_m, text_feat_m = self._momentum_features(pixel_values, input_ids, attention_mask)
        ids_or_zeros = ids if ids is not None else torch.zeros(B, dtype=torch.long, device=input_ids.device)
        image_m_all, text_m_all = all_gather_no_grad(image_feat_m), all_gather_no_grad(text_feat_m)
        ids_all = all_gather_no_grad(ids_or_zeros)
        if self.gather_keys:
            batch_image_keys, batch_text_keys, batch_ids, offset = image_m_all, text_m_all, ids_all, rank * B
        else:
            batch_image_keys, batch_text_keys, batch_ids, offset = image_feat_m, text_feat_m, ids_or_zeros, 0
        image_keys = torch.cat([batch_image_keys, self.image_queue.t().clone()])
        text_keys = torch.cat([batch_text_keys, self.text_queue.t().clone()])
        key_ids = torch.cat([batch_ids, self.id_queue.clone()]) if ids is not None else None
        targets = itc_targets(B, image_keys.shape[0], offset, ids, key_ids)
        loss_itc = itc_loss(
            image_feat, text_feat, image_keys, text_keys, temp, targets, image_feat_m, text_feat_m, alpha
        )

        # ITM with hard negatives mined from the ITC similarities of the local or global batch
        with torch.no_grad():
            global_pool = sampler.pool == "global"
            if self.mining_features == "online":  # BLIP retrieval: online features on both sides
                pool_image, pool_text = image_feat.detach(), text_feat.detach()
                if global_pool:
                    pool_image, pool_text = all_gather_no_grad(pool_image), all_gather_no_grad(pool_text)
            elif global_pool:
                pool_image, pool_text = image_m_all, text_m_all
            else:
                pool_image, pool_text = image_feat_m, text_feat_m
            pool_ids, pool_offset = (ids_all, rank * B) if global_pool else (ids_or_zeros, 0)
            own = pool_offset + torch.arange(B, device=image_feat.device)  # each row's pair in the pool
            sim_i2t = image_feat @ pool_text.t() / temp
            sim_t2i = text_feat @ pool_image.t() / temp
            if ids is None:
                positive = torch.zeros_like(sim_i2t, dtype=torch.bool)
                positive[torch.arange(B), own] = True
            else:
                positive = ids[:, None] == pool_ids[None, :]
        neg_text_idx, neg_image_idx = sampler(sim_i2t, sim_t2i, positive, own)
        self._enqueue(image_m_all, text_m_all, ids_all if ids is not None else torch.full_like(ids_all, -100))

        image_kv = blip.image_kv(image_embeds)
        itm_ids, itm_mask, itm_kv = itm_inputs(
            input_ids,
            attention_mask,
            image_embeds,
            image_kv,
            neg_text_idx,
            neg_image_idx,
            sampler.pool,
            blip.image_kv,
            blip.config.pad_token_id,
        )
        loss_itm = itm_loss(blip.itm_logits(itm_ids, itm_mask, image_kv=itm_kv), num_positives=B)
        if not self.lm_loss:
            return PretrainingOutput(
                loss_itc,
                loss_itm,
                loss_itc.new_zeros(()),
                temp.detach().squeeze(),
                neg_text_idx,
                neg_image_idx,
            )

        # LM, normalised by the number of scored tokens over all ranks so W ranks equal one rank
        loss_lm, num_tokens = blip.lm_loss(input_ids, attention_mask, image_kv=image_kv)
        loss_lm = loss_lm * world / all_reduce_sum(num_tokens).clamp(min=1)
        return PretrainingOutput(
            loss_itc, loss_itm, loss_lm, temp.detach().squeeze(), neg_text_idx, neg_image_idx
        )
