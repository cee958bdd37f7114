"""Image-text contrastive losses: BLIP's (momentum distillation, queues) and BLIP-2's (query max)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def itc_targets(
    num_rows: int,
    num_keys: int,
    offset: int = 0,
    ids: Tensor | None = None,
    key_ids: Tensor | None = None,
) -> Tensor:
    """Hard ITC targets ``(B, K)``: each row's positives share the probability mass uniformly.

    Without ids the positive of row i is key ``offset + i`` (the diagonal of the batch, shifted
    to this rank's block when the keys are gathered across ranks). With ``ids`` ``(B,)`` and
    ``key_ids`` ``(K,)`` every key with the same id is a positive (BLIP's image-id positives).
    """
    if ids is None:
        targets = torch.zeros(num_rows, num_keys)
        targets[torch.arange(num_rows), offset + torch.arange(num_rows)] = 1.0
        return targets
    positives = (ids[:, None] == key_ids[None, :]).float()
    return positives / positives.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over rows of ``-sum(targets * log_softmax(logits))``, computed in fp32.

    ``label_smoothing`` mixes the targets with the uniform distribution, as
    ``F.cross_entropy(label_smoothing=...)`` does.
    """
    if label_smoothing:
        targets = (1 - label_smoothing) * targets + label_smoothing / targets.shape[1]
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1).mean()


def contrastive_loss(
    sim_i2t: Tensor, sim_t2i: Tensor, targets: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Mean of the image-to-text and text-to-image soft cross entropies of ``(B, K)`` logits."""
    targets = targets.to(sim_i2t.device)
    return (
        soft_cross_entropy(sim_i2t, targets, label_smoothing)
        + soft_cross_entropy(sim_t2i, targets, label_smoothing)
    ) / 2


def max_query_similarity(query_feats: Tensor, text_feats: Tensor) -> Tensor:
    """BLIP-2's image-text similarity: the best of the image's queries.

    ``query_feats`` ``(I, Q, E)`` and ``text_feats`` ``(T, E)`` -> ``(I, T)``.
    """
    return torch.einsum("iqe,te->itq", query_feats, text_feats).amax(dim=-1)


def blip2_itc_loss(
    image_feats: Tensor,
    text_feat: Tensor,
    image_keys: Tensor,
    text_keys: Tensor,
    temp: Tensor | float,
    targets: Tensor,
    label_smoothing: float = 0.1,
) -> Tensor:
    """BLIP-2's ITC: similarity = max over queries, in-batch (all-rank) keys, label smoothing 0.1.

    Args:
        image_feats: this rank's query features ``(B, Q, E)``, L2-normalised.
        text_feat: this rank's text features ``(B, E)``, L2-normalised.
        image_keys: ``(K, Q, E)`` query features of every rank's batch.
        text_keys: ``(K, E)`` text features of every rank's batch, in the same order.
        temp: temperature.
        targets: ``(B, K)`` from :func:`itc_targets`.
    """
    sim_i2t = max_query_similarity(image_feats, text_keys) / temp
    sim_t2i = max_query_similarity(image_keys, text_feat).t() / temp
    return contrastive_loss(sim_i2t, sim_t2i, targets, label_smoothing)


def itc_loss(
    image_feat: Tensor,
    text_feat: Tensor,
    image_keys: Tensor,
    text_keys: Tensor,
    temp: Tensor | float,
    targets: Tensor,
    image_feat_m: Tensor | None = None,
    text_feat_m: Tensor | None = None,
    alpha: float = 0.0,
) -> Tensor:
    """ITC loss of BLIP, averaged over the two directions.

    Args:
        image_feat: online image features ``(B, E)``, L2-normalised.
        text_feat: online text features ``(B, E)``, L2-normalised.
        image_keys: ``(K, E)`` momentum image features of the batch followed by the queue.
        text_keys: ``(K, E)`` the same for text, in the same order.
        temp: temperature.
        targets: ``(B, K)`` hard targets from :func:`itc_targets`.
        image_feat_m, text_feat_m: momentum features ``(B, E)`` of the same rows; with
            ``alpha > 0`` the targets become ``alpha * softmax(momentum sims) + (1 - alpha) * targets``.
        alpha: momentum distillation weight.
    """
    targets = targets.to(image_feat.device)
    sim_i2t = image_feat @ text_keys.t() / temp
    sim_t2i = text_feat @ image_keys.t() / temp
    targets_i2t = targets_t2i = targets
    if alpha > 0:
        if image_feat_m is None or text_feat_m is None:
            raise ValueError("momentum distillation (alpha > 0) needs image_feat_m and text_feat_m")
        with torch.no_grad():
            targets_i2t = alpha * F.softmax((image_feat_m @ text_keys.t() / temp).float(), dim=1)
            targets_i2t = targets_i2t + (1 - alpha) * targets
            targets_t2i = alpha * F.softmax((text_feat_m @ image_keys.t() / temp).float(), dim=1)
            targets_t2i = targets_t2i + (1 - alpha) * targets
    return (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
