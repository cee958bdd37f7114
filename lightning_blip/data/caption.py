"""Captioning data (COCO Karpathy, NoCaps): training pairs, and one evaluation item per image.

The layout of BLIP's annotation files: ``coco_karpathy_train.json`` holds one caption per record,
``{"image": path, "caption": str, "image_id": ...}``; ``coco_karpathy_val.json`` /
``coco_karpathy_test.json`` hold one record per image, ``{"image": path, "caption": [str, ...]}``.
Evaluation generates one caption per image and scores it against all of that image's references,
which are kept as written (the metrics tokenise them, as pycocoevalcap scores COCO's raw captions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_blip.data.annotations import ImageTextRecord, group_by_image
from lightning_blip.data.datamodule import ImageTextDataModule
from lightning_blip.data.dataset import SkippingImageDataset
from lightning_blip.data.transforms import eval_transform


class CaptionEvalDataset(SkippingImageDataset):
    """One item per image with its reference captions.

    Args:
        records: annotation records; records of the same image are merged (their captions are all
            that image's references), so one record per caption works as well as one per image.
        image_root: folder the records' image paths are relative to.
        transform: PIL image -> ``(3, H, W)`` tensor.

    An unreadable image is skipped with a warning and counted (the item is ``None``; the collator
    drops it), so it is neither captioned nor scored.
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        image_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        super().__init__(image_root, transform, substitute_corrupt=False)
        self.records = group_by_image(records)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:
        """``{"image": (3, H, W), "index": int, "image_id": str, "references": [str]}`` or ``None``."""
        record = self.records[index]
        image = self._read_image(record.image, index, seed)
        if image is None:
            return None
        return {
            "image": image,
            "index": index,
            "image_id": record.image_id,
            "references": list(record.captions),
        }


def collate_caption_eval(items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Batch :class:`CaptionEvalDataset` items (``None`` for a skipped image).

    Returns ``{"image": (B, 3, H, W), "index": (B,) long, "image_id": B str (the annotations' ids, the
    image path where a record has none), "references": B lists of str, "num_skipped": int}``; B = 0
    (image ``(0, 3, 0, 0)``) when every image of the batch was skipped.
    """
    kept = [item for item in items if item is not None]
    return {
        "image": torch.stack([item["image"] for item in kept]) if kept else torch.zeros(0, 3, 0, 0),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "image_id": [item["image_id"] for item in kept],
        "references": [item["references"] for item in kept],
        "num_skipped": len(items) - len(kept),
    }


class CaptionDataModule(ImageTextDataModule):
    """COCO Karpathy / NoCaps captioning: training pairs as :class:`ImageTextDataModule` (one
    ``pre_caption``-ed caption per item; the task adds the prompt), evaluation (validation, test,
    predict) as :class:`CaptionEvalDataset` batches of images with their references, for
    :class:`~lightning_blip.tasks.caption.CaptionFinetune` and
    :class:`~lightning_blip.tasks.qformer_stage2.QFormerStage2`.

    Takes the arguments of :class:`ImageTextDataModule`; ``eval_batch_size`` counts images. Predict
    records need no caption (``{"image": "x.jpg"}``, ``image_id`` kept when given), and
    ``predict_images`` captions a folder.
    """

    predict_optional = frozenset({"caption"})

    def build_dataset(self, split: str, records: list[ImageTextRecord]) -> Dataset:
        if split == "train":
            return super().build_dataset(split, records)
        return CaptionEvalDataset(records, self.split_image_root(split), eval_transform(self.image_size))

    def eval_collate_fn(self) -> Callable[[Sequence[dict[str, Any] | None]], dict[str, Any]]:
        return collate_caption_eval
