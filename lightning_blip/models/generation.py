"""Caption decoding on the KV cache (image cross-attention keys/values computed once per image)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_blip.models.blip import BlipModel


@torch.no_grad()
def greedy_decode(
    model: BlipModel,
    image_embeds: Tensor,
    prompt_ids: Tensor,
    max_length: int = 20,
    min_length: int = 5,
) -> Tensor:
    """Greedy decoding with a KV cache.

    Args:
        model: the MED model.
        image_embeds: ``(B, 1 + N, Dv)`` image tokens.
        prompt_ids: ``(B, P)`` prompt ids starting with [DEC] (any first id is replaced by [DEC]),
            without a trailing [SEP].
        max_length: most tokens in the result, prompt included (BLIP counts the same way).
        min_length: [SEP] is suppressed until the sequence has this many tokens.

    Returns:
        ``(B, T)`` ids (prompt included); positions after [SEP] hold [PAD].
    """
    cfg = model.config
    ids = prompt_ids.clone()
    ids[:, 0] = cfg.bos_token_id
    cache = model.start_decoding(image_embeds)
    mask = torch.ones_like(ids)
    step_ids = ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    while ids.shape[1] < max_length and not done.all():
        logits, cache = model.decode_step(step_ids, mask, cache)
        if ids.shape[1] < min_length:
            logits[:, cfg.sep_token_id] = float("-inf")
        next_ids = logits.argmax(dim=-1).masked_fill(done, cfg.pad_token_id)
        done |= next_ids == cfg.sep_token_id
        step_ids = next_ids[:, None]
        ids = torch.cat([ids, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    return ids


def decode_captions(tokenizer, ids: Tensor, prompt: str = "") -> list[str]:
    """Token ids ``(B, T)`` -> strings with special tokens and the prompt removed."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    prompt = prompt.strip()
    return [t[len(prompt) :].strip() if prompt and t.startswith(prompt) else t.strip() for t in texts]
