"""Image-text retrieval data (COCO Karpathy, Flickr30k): training pairs, and one evaluation item per image.

The layout of BLIP's annotation files: ``coco_karpathy_train.json`` / ``flickr30k_train.json`` hold one
caption per record with an ``image_id`` (pairs of one image are ITC positives);
``coco_karpathy_test.json`` / ``flickr30k_test.json`` (and ``_val``) hold one record per image,
``{"image": path, "caption": [str, ...]}``. Evaluation scores every image against every caption of
the split, so an evaluation item is an image with all of its captions, and the dataset keeps the
``txt2img`` / ``img2txt`` maps between caption and image indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_blip.data.annotations import ImageTextRecord
from lightning_blip.data.collate import ImageTextCollator
from lightning_blip.data.datamodule import ImageTextDataModule
from lightning_blip.data.dataset import SkippingImageDataset
from lightning_blip.data.text import pre_caption
from lightning_blip.data.transforms import eval_transform


class RetrievalEvalDataset(SkippingImageDataset):
    """One item per image (annotation record) with all its captions.

    Args:
        records: one record per image, captions as a list.
        image_root: folder the records' image paths are relative to.
        transform: PIL image -> ``(3, H, W)`` tensor.
        max_words: ``pre_caption`` word limit.

    Attributes:
        texts: every caption (``pre_caption``-ed), image by image in file order.
        txt2img: ``txt2img[t]`` is the image index of text t.
        img2txt: ``img2txt[i]`` lists the text indices of image i.

    An unreadable image is skipped with a warning (the item is ``None``); the collator then drops
    its captions too, so that every evaluated text has its image. A text-only record (prediction)
    gives an item with ``image`` ``None`` and its captions.
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        image_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
        max_words: int = 30,
    ) -> None:
        super().__init__(image_root, transform, substitute_corrupt=False)
        self.records = list(records)
        self.texts: list[str] = []
        self.txt2img: list[int] = []
        self.img2txt: list[list[int]] = []
        for index, record in enumerate(self.records):
            first = len(self.texts)
            self.texts += [pre_caption(caption, max_words) for caption in record.captions]
            self.txt2img += [index] * len(record.captions)
            self.img2txt.append(list(range(first, len(self.texts))))

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:
        """``{"image": (3, H, W) | None, "index": int, "image_id": str, "captions": [str],
        "text_index": [int]}``, or ``None`` when the record's image is unreadable."""
        record = self.records[index]
        image = None if record.image is None else self._read_image(record.image, index, seed)
        if image is None and record.image is not None:
            return None
        texts = self.img2txt[index]
        return {
            "image": image,
            "index": index,
            "image_id": record.image_id,
            "captions": [self.texts[t] for t in texts],
            "text_index": texts,
        }


class RetrievalCollator(ImageTextCollator):
    """Batch evaluation items (``None`` for a skipped image) of :class:`RetrievalEvalDataset`.

    Returns ``{"image": (B, 3, H, W), "index": (B,) image indices, "image_id": B str, "input_ids":
    (T, L), "attention_mask": (T, L), "text_index": (T,) text indices, "text_image_index": (T,) the
    image index of each text, "caption": list of T str, "num_skipped": int}``, where T counts the
    captions of the items and B their images (text-only items have none). Token ids are
    ``[CLS] ... [SEP]`` padded to the longest, at most ``max_length``.
    """

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        images = [item for item in kept if item["image"] is not None]
        captions = [c for item in kept for c in item["captions"]]
        text_image = [item["index"] for item in kept for _ in item["captions"]]
        if captions:
            text = self.tokenizer(
                captions, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            input_ids, attention_mask = text["input_ids"].long(), text["attention_mask"].long()
        else:
            input_ids, attention_mask = torch.zeros(2, 0, 0, dtype=torch.long)
        return {
            "image": torch.stack([item["image"] for item in images]) if images else torch.zeros(0, 3, 0, 0),
            "index": torch.tensor([item["index"] for item in images], dtype=torch.long),
            "image_id": [item["image_id"] for item in images],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "text_index": torch.tensor([t for item in kept for t in item["text_index"]], dtype=torch.long),
            "text_image_index": torch.tensor(text_image, dtype=torch.long),
            "caption": captions,
            "num_skipped": len(items) - len(kept),
        }


class RetrievalDataModule(ImageTextDataModule):
    """COCO / Flickr30k retrieval: training pairs as :class:`ImageTextDataModule` (one caption per
    item; its ``image_id`` groups the pairs of one image), evaluation (validation, test, predict)
    as :class:`RetrievalEvalDataset` batches: images with all their captions, for
    :class:`~lightning_blip.tasks.retrieval.RetrievalFinetune`'s re-ranked retrieval.

    Takes the arguments of :class:`ImageTextDataModule`; ``eval_batch_size`` counts images. BLIP's
    evaluation captions are cut at 35 tokens (``max_length: 35`` in the recipes). Predict records
    may hold an image or captions or both (``predict_images``: a folder of images), and predict
    embeds whichever is given.
    """

    predict_optional = frozenset({"caption", "image"})

    def build_dataset(self, split: str, records: list[ImageTextRecord]) -> Dataset:
        if split == "train":
            return super().build_dataset(split, records)
        root = self.split_image_root(split)
        return RetrievalEvalDataset(records, root, eval_transform(self.image_size), self.max_words)

    def eval_collate_fn(self) -> RetrievalCollator:
        return RetrievalCollator(self.tokenizer, self.collator.max_length)
