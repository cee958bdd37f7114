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


def scored_positions(labels: Tensor) -> Tensor:
    """``(B, L - 1)`` mask of the positions whose next token is scored (labels shifted by one)."""
    return labels[:, 1:] != IGNORE_INDEX


def token_cross_entropy(
    logits: Tensor, targets: Tensor, label_smoothing: float = 0.1, reduction: str = "mean"
) -> Tensor:
    """Cross entropy of ``(T, V)`` logits against ``(T,)`` targets, in fp32, with label smoothing."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing, reduction=reduction)


def lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.1, reduction: str = "mean") -> Tensor:
    """Next-token cross entropy: logits ``(B, L, V)`` at t predict ``labels`` ``(B, L)`` at t + 1.

    Tokens labelled -100 are ignored (also in the smoothing). ``reduction="sum"`` gives the sum
    over scored tokens, to normalise by a count gathered over ranks. To skip the LM head on
    unscored positions, project only ``hidden[:, :-1][scored_positions(labels)]`` and call
    :func:`token_cross_entropy` with ``labels[:, 1:][scored_positions(labels)]``.
    """
    scored = scored_positions(labels)
    return token_cross_entropy(logits[:, :-1][scored], labels[:, 1:][scored], label_smoothing, reduction)


def sequence_lm_loss(
    scored_logits: Tensor, labels: Tensor, label_smoothing: float = 0.1, scored: Tensor | None = None
) -> Tensor:
    """Next-token cross entropy summed over each sequence's scored tokens ``(B,)``.

    BLIP's ``reduction='none'`` (VQA answers and candidate ranking). ``scored_logits`` ``(T, V)``
    are the logits at the scored positions only, ``hidden[:, :-1][scored_positions(labels)]``
    through the LM head, so the head never runs on padding; ``labels`` ``(B, L)`` with -100 where
    not scored.
    """
    scored = scored_positions(labels) if scored is None else scored
    token_losses = token_cross_entropy(scored_logits, labels[:, 1:][scored], label_smoothing, "none")
    rows = scored.nonzero()[:, 0]
    return token_losses.new_zeros(labels.shape[0]).index_add_(0, rows, token_losses)
