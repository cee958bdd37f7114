"""Resampling a ViT's position embeddings to another patch grid (a state-dict operation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_position_embeddings(pos_embed: Tensor, grid: Sequence[int], num_prefix_tokens: int = 1) -> Tensor:
    """ViT position embeddings ``(1, P + N, D)`` for another patch grid, as BLIP's ``interpolate_pos_embed``.

    The ``P`` prefix rows ([CLS]) stay; the square grid of the ``N`` patch rows is resized bicubically
    (``align_corners=False``, no antialiasing: timm's ``resample_abs_pos_embed`` antialiases by
    default, which changes even an upsampling by up to 8% of the values).
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position embeddings do not form a square grid")
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.to(pos_embed.dtype).permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([prefix, patches], dim=1)
