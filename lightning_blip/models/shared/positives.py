"""Which image-text pairs count as positives of each other in ITC (BLIP's and BLIP-2's pretraining)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Positives = Literal["pair", "image_id", "caption"]


def caption_ids(input_ids: Tensor) -> Tensor:
    """An id per row ``(B,)`` equal for identical token sequences (positives by caption)."""
    weights = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device) * 1_000_003
    return (input_ids * weights).sum(dim=1) % (2**61 - 1)


class PositivePairs:
    """``positive_ids`` for a model with a ``positives`` attribute (``"pair"``, ``"image_id"``, ``"caption"``)."""

    positives: Positives

    def positive_ids(self, input_ids: Tensor, image_ids: Tensor | None) -> Tensor | None:
        """Ids whose equality makes two pairs positives (None: only a pair with itself)."""
        if self.positives == "pair":
            return None
        if self.positives == "caption":
            return caption_ids(input_ids)
        if image_ids is None:
            raise ValueError("positives='image_id' needs image_ids in the batch")
        return image_ids
