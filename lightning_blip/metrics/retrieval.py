"""Retrieval hit rates from ITC features."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def dot_similarity(image: Tensor, text: Tensor) -> Tensor:
    """``(N, E)`` x ``(M, E)`` -> ``(N, M)`` dot products (BLIP's ITC similarity)."""
    return image @ text.t()


def recall_at_1(
    image: Tensor,
    text: Tensor,
    ids: Tensor,
    index: Tensor | None = None,
    similarity: Callable[[Tensor, Tensor], Tensor] = dot_similarity,
) -> dict[str, float]:
    """Image-to-text and text-to-image R@1 where row i of ``image`` and ``text`` form a pair.

    Args:
        image: ``(N, ...)`` image features (``(N, E)``; BLIP-2: ``(N, Q, E)``); ``text``: ``(N, E)``.
        ids: ``(N,)`` a retrieved item is a hit when its id equals the query's (image ids, or
            caption ids when captions repeat across images).
        index: ``(N,)`` dataset indices; rows that repeat an index (padding added by a
            distributed sampler) are dropped first.
        similarity: ``(image, text)`` -> ``(N, N)`` scores (BLIP-2: max over queries).

    Returns ``{"i2t_r1", "t2i_r1"}``: the fraction of queries whose top item is a hit.
    """
    if index is not None:
        first = torch.zeros_like(index, dtype=torch.bool)
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
        keep = torch.ones_like(sorted_index, dtype=torch.bool)
        keep[1:] = sorted_index[1:] != sorted_index[:-1]
        first[order[keep]] = True
        image, text, ids = image[first], text[first], ids[first]
    sim = similarity(image.float(), text.float())
    return {
        "i2t_r1": (ids[sim.argmax(dim=1)] == ids).float().mean().item(),
        "t2i_r1": (ids[sim.argmax(dim=0)] == ids).float().mean().item(),
    }
