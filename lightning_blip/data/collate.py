"""Batching of ``ImageTextDataset`` items: stack images, tokenize captions, count skipped items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


class ImageTextCollator:
    """Turn a list of items (``None`` for a skipped image) into a batch.

    Returns ``{"image": (B, 3, H, W), "input_ids": (B, L) long, "attention_mask": (B, L) long,
    "image_id": (B,) long, "index": (B,) long, "caption": list of B str, "num_skipped": int}``.
    Input ids are ``[CLS] ... [SEP]`` padded with 0 to the longest caption, at most ``max_length``.
    ``num_skipped`` counts the ``None`` items and the items that replaced an unreadable one (each
    unreadable sample once): dataloader workers are separate processes, so the batch is how skips
    reach the training process. If every item was skipped, B = 0 and the
    image is ``(0, 3, 0, 0)``, input ids and mask ``(0, 0)``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 30) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        captions = [item["caption"] for item in kept]
        if kept:
            images = torch.stack([item["image"] for item in kept])
            text = self.tokenizer(
                captions, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            input_ids, attention_mask = text["input_ids"].long(), text["attention_mask"].long()
        else:
            images = torch.zeros(0, 3, 0, 0)
            input_ids, attention_mask = torch.zeros(2, 0, 0, dtype=torch.long)
        return {
            "image": images,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_id": torch.tensor([item["image_id"] for item in kept], dtype=torch.long),
            "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
            "caption": captions,
            "num_skipped": len(items) - len(kept) + sum(item.get("num_skipped", 0) for item in kept),
        }
