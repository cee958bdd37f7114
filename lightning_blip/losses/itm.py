"""Image-text matching: hard-negative selection and the ITM loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_blip.layers.attention import KeyValue, concat_kv, index_kv
from lightning_blip.losses.gather import all_gather_padded, all_gather_with_grad, pad_to


def hard_negative_weights(
    sim: Tensor, positive_mask: Tensor, epsilon: float = 1e-4, own: Tensor | None = None
) -> Tensor:
    """Sampling weights ``(B, K)`` for hard negatives: ``softmax(sim) + epsilon``, positives zeroed.

    BLIP pretraining uses ``epsilon=1e-4``; its retrieval fine-tuning uses 0. A row left with no
    weight falls back to uniform weights: over its non-positive candidates (their softmax underflowed,
    e.g. ``epsilon=0`` at a low temperature), or, when every candidate is a positive (a small batch of
    one image's captions), over every candidate but the row's own pair ``own`` ``(B,)`` (its index in
    the pool), so that sampling never fails and never returns the pair itself. Raises ``ValueError``
    when a row has no other candidate at all (a pool of one).
    """
    weights = F.softmax(sim.float(), dim=1) + epsilon
    weights = weights.masked_fill(positive_mask, 0.0)
    empty = weights.sum(dim=1) == 0
    if empty.any():
        fallback = (~positive_mask[empty]).float()
        only_positives = fallback.sum(dim=1) == 0
        if only_positives.any():
            if own is None:
                raise ValueError("every candidate of a row is a positive: pass `own`, the rows' own pairs")
            others = torch.ones_like(fallback[only_positives])
            others[torch.arange(others.shape[0]), own[empty][only_positives]] = 0.0
            fallback[only_positives] = others
        weights[empty] = fallback
        if (fallback.sum(dim=1) == 0).any():
            raise ValueError(
                f"ITM hard negatives need at least 2 candidates per row, got a pool of {sim.shape[1]} "
                "(a batch of 1 with pool='local'?)"
            )
    return weights


def select_negatives(weights: Tensor, hardest: bool = False) -> Tensor:
    """One negative per row of ``weights`` ``(B, K)`` -> indices ``(B,)``.

    Sampled with ``torch.multinomial`` as in the paper, or the highest weight (``hardest``).
    """
    if hardest:
        return weights.argmax(dim=1)
    return torch.multinomial(weights, 1).squeeze(1)


def itm_loss(logits: Tensor, num_positives: int) -> Tensor:
    """Cross entropy of ITM logits ``(B_pos + B_neg, 2)`` whose first ``num_positives`` rows match."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:num_positives] = 1
    return F.cross_entropy(logits.float(), labels)


@dataclass
class NegativeSampler:
    """How ITM negatives are chosen.

    Attributes:
        strategy: ``"sample"`` (multinomial over the weights, the paper) or ``"hardest"`` (argmax).
        pool: ``"local"`` (this rank's batch, BLIP pretraining) or ``"global"`` (every rank's
            batch, BLIP retrieval with ``negative_all_rank``).
        epsilon: added to the softmax before positives are zeroed (1e-4 in BLIP pretraining).
    """

    strategy: Literal["sample", "hardest"] = "sample"
    pool: Literal["local", "global"] = "local"
    epsilon: float = 1e-4

    def __post_init__(self) -> None:
        if self.strategy not in ("sample", "hardest"):
            raise ValueError(f"strategy must be 'sample' or 'hardest', got {self.strategy!r}")
        if self.pool not in ("local", "global"):
            raise ValueError(f"pool must be 'local' or 'global', got {self.pool!r}")

    def __call__(
        self, sim_i2t: Tensor, sim_t2i: Tensor, positive_mask: Tensor, own: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Negatives for each image and each text.

        Args:
            sim_i2t: ``(B, P)`` similarity of this rank's images to the pool's texts.
            sim_t2i: ``(B, P)`` similarity of this rank's texts to the pool's images.
            positive_mask: ``(B, P)`` True where the pair must not be a negative.
            own: ``(B,)`` each row's own pair in the pool (never chosen, even when every candidate
                is a positive; see :func:`hard_negative_weights`).

        Returns:
            ``(neg_text_idx, neg_image_idx)``, each ``(B,)`` indices into the pool.
        """
        hardest = self.strategy == "hardest"
        with torch.no_grad():
            neg_text = select_negatives(
                hard_negative_weights(sim_i2t, positive_mask, self.epsilon, own), hardest
            )
            neg_image = select_negatives(
                hard_negative_weights(sim_t2i, positive_mask, self.epsilon, own), hardest
            )
        return neg_text, neg_image


def itm_inputs(
    input_ids: Tensor,
    attention_mask: Tensor,
    image_embeds: Tensor,
    image_kv: list[KeyValue | None],
    neg_text_idx: Tensor,
    neg_image_idx: Tensor,
    pool: Literal["local", "global"],
    image_kv_fn: Callable[[Tensor], list[KeyValue | None]],
    pad_token_id: int = 0,
) -> tuple[Tensor, Tensor, list[KeyValue | None]]:
    """The 3B rows of the ITM pass: positives, (text i, negative image), (negative text, image i).

    The image's cross-attention keys/values are computed once (``image_kv``, B rows) and indexed;
    with a global pool the negative images' features are gathered with gradient and projected
    (``image_kv_fn``), and the negative texts come from every rank's batch.

    Returns ids ``(3B, L)``, mask ``(3B, L)`` and per-layer keys/values with 3B rows.
    """
    if pool == "global":
        neg_image_kv = image_kv_fn(all_gather_with_grad(image_embeds)[neg_image_idx])
        pool_ids, pool_mask = all_gather_padded(input_ids, attention_mask, pad_token_id)
    else:
        neg_image_kv = index_kv(image_kv, neg_image_idx)
        pool_ids, pool_mask = input_ids, attention_mask
    length = pool_ids.shape[1]
    ids = torch.cat([pad_to(input_ids, length, pad_token_id)] * 2 + [pool_ids[neg_text_idx]])
    mask = torch.cat([pad_to(attention_mask, length, 0)] * 2 + [pool_mask[neg_text_idx]])
    return ids, mask, concat_kv([image_kv, neg_image_kv, image_kv])
