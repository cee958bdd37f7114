"""Language-modelling loss of the image-grounded decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def lm_labels(input_ids: Tensor, attention_mask: Tensor, prompt_length: int = 0) -> Tensor:
    """Targets ``(B, L)``: the ids with padding and the first ``prompt_length`` tokens set to -100.

    BLIP's captioner does not score its prompt ("[DEC] a picture of" = 4 positions).
    """
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    if prompt_length:
        labels[:, :prompt_length] = IGNORE_INDEX
    return labels


def lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.1, reduction: str = "mean") -> Tensor:
    """Next-token cross entropy: logits ``(B, L, V)`` at t predict ``labels`` ``(B, L)`` at t + 1.

    Tokens labelled -100 are ignored (also in the smoothing). ``reduction="sum"`` gives the sum
    over scored tokens, to normalise by a count gathered over ranks.
    """
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
