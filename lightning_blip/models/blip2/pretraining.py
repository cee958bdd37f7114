"""BLIP-2 stage 1: ITC, ITM and ITG of the Q-Former over a frozen image encoder."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from lightning_blip.losses.gather import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    rank_and_world,
)
from lightning_blip.losses.itc import blip2_itc_loss, itc_targets, max_query_similarity
from lightning_blip.losses.itm import NegativeSampler, itm_inputs, itm_loss
from lightning_blip.losses.lm import lm_labels, scored_positions, token_cross_entropy
from lightning_blip.models.blip2.config import Blip2Config
from lightning_blip.models.blip2.model import Blip2Model
from lightning_blip.models.shared.positives import PositivePairs, Positives


class Blip2PretrainingOutput(NamedTuple):
    """Losses of one stage-1 step (scalars), the temperature used and the ITM negatives chosen."""

    loss_itc: Tensor
    loss_itm: Tensor
    loss_lm: Tensor
    temp: Tensor
    neg_text_idx: Tensor
    neg_image_idx: Tensor


class Blip2ForPretraining(PositivePairs, nn.Module):
    """Stage-1 representation learning of :class:`Blip2Model` (no queue, no momentum encoder).

    One frozen ViT forward and three Q-Former passes per batch: the queries alone over the image
    (ITC image side; their self-attention keys/values are kept for ITG), the text alone (ITC text
    side), and ``[queries; text]`` bidirectionally for the 3B ITM rows. ITG then runs the text
    alone on the cached query keys/values, which equals one pass over ``[queries; text]`` under
    the multimodal-causal mask (``itg_cache=False`` runs that pass instead, for comparison).

    Args:
        config: the model.
        gather_with_grad: ITC features of the other ranks carry gradient, so W ranks equal one rank
            with the same global batch. False reproduces LAVIS (gathered without gradient).
        positives: which pairs are ITC positives and never ITM negatives: only the pair itself
            (``"pair"``: LAVIS without image ids), pairs of one ``"image_id"`` (LAVIS with image
            ids), or identical captions (``"caption"``: small data sets with repeated captions).
        itg_cache: ITG on the cached query keys/values (the reference's efficient form).
        label_smoothing: of ITC and ITG (0.1 in LAVIS).
    """

    def __init__(
        self,
        config: Blip2Config | None = None,
        gather_with_grad: bool = True,
        positives: Positives = "pair",
        itg_cache: bool = True,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if positives not in ("pair", "image_id", "caption"):
            raise ValueError(f"positives must be 'pair', 'image_id' or 'caption', got {positives!r}")
        self.blip2 = Blip2Model(config)
        self.gather_with_grad = gather_with_grad
        self.positives: Literal["pair", "image_id", "caption"] = positives
        self.itg_cache = itg_cache
        self.label_smoothing = label_smoothing

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Clamp the temperature to [0.001, 0.5] in place (BLIP does; BLIP-2's code does not)."""
        self.blip2.temp.clamp_(0.001, 0.5)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_ids: Tensor | None = None,
        negative_sampler: NegativeSampler | None = None,
    ) -> Blip2PretrainingOutput:
        """ITC, ITM and ITG losses of a batch of pairs.

        Args:
            pixel_values: ``(B, 3, H, W)``.
            input_ids: ``(B, L)`` Q-Former tokens, [CLS] first (ITG swaps in [DEC]).
            attention_mask: ``(B, L)``.
            image_ids: ``(B,)`` integer image ids (for ``positives="image_id"``).
            negative_sampler: how ITM negatives are chosen (default: sampled, global pool, as LAVIS).
        """
        sampler = negative_sampler or NegativeSampler(pool="global")
        blip2 = self.blip2
        rank, world = rank_and_world()
        B = input_ids.shape[0]
        temp = blip2.temp.clamp(0.001, 0.5)

        image_embeds = blip2.forward_image(pixel_values)
        image_kv = blip2.image_kv(image_embeds)
        query_pass = blip2.query_output(image_kv=image_kv, use_cache=self.itg_cache)
        image_feats = blip2.image_features(query_pass.last_hidden_state)  # (B, Q, E)
        text_feat = blip2.encode_text(input_ids, attention_mask)  # (B, E)

        # ITC over every rank's batch
        ids = self.positive_ids(input_ids, image_ids)
        gather = all_gather_with_grad if self.gather_with_grad else all_gather_no_grad
        image_all, text_all = gather(image_feats), gather(text_feat)
        ids_all = all_gather_no_grad(ids) if ids is not None else None
        targets = itc_targets(B, image_all.shape[0], rank * B, ids, ids_all).to(text_feat.device)
        loss_itc = blip2_itc_loss(
            image_feats, text_feat, image_all, text_all, temp, targets, self.label_smoothing
        )

        # ITM with hard negatives mined from the ITC similarities
        with torch.no_grad():
            if sampler.pool == "global":
                sim_i2t = max_query_similarity(image_feats, text_all) / temp
                sim_t2i = max_query_similarity(image_all, text_feat).t() / temp
                positive, own = targets > 0, rank * B + torch.arange(B, device=targets.device)
            else:
                sim_i2t = max_query_similarity(image_feats, text_feat) / temp
                sim_t2i = sim_i2t.t()
                positive, own = (
                    targets[:, rank * B : (rank + 1) * B] > 0,
                    torch.arange(B, device=targets.device),
                )
        neg_text_idx, neg_image_idx = sampler(sim_i2t, sim_t2i, positive, own)
        itm_ids, itm_mask, itm_kv = itm_inputs(
            input_ids,
            attention_mask,
            image_embeds,
            image_kv,
            neg_text_idx,
            neg_image_idx,
            sampler.pool,
            blip2.image_kv,
            blip2.config.pad_token_id,
        )
        loss_itm = itm_loss(blip2.itm_logits(itm_ids, itm_mask, image_kv=itm_kv), num_positives=B)

        # ITG, normalised by the number of scored tokens over all ranks so W ranks equal one rank
        labels = lm_labels(input_ids, attention_mask)
        scored = scored_positions(labels)
        if self.itg_cache:
            hidden = blip2.decoder_states(input_ids, attention_mask, query_cache=query_pass.cache)
        else:
            hidden = blip2.decoder_states(input_ids, attention_mask, image_kv=image_kv)
        logits = blip2.lm_head(hidden[:, :-1][scored])
        num_tokens = all_reduce_sum(scored.sum())
        loss_lm = token_cross_entropy(logits, labels[:, 1:][scored], self.label_smoothing, reduction="sum")
        loss_lm = loss_lm * world / num_tokens.clamp(min=1)
        return Blip2PretrainingOutput(
            loss_itc, loss_itm, loss_lm, temp.detach().squeeze(), neg_text_idx, neg_image_idx
        )
