"""Retrieval data: the COCO Karpathy / Flickr30k json layout, text-image maps, corrupt images, batches."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from lightning_blip.data import RetrievalDataModule, RetrievalEvalDataset
from lightning_blip.data.annotations import load_annotations
from lightning_blip.data.dataset import ImageTextDataset
from lightning_blip.data.transforms import eval_transform

TEST_RECORDS = [
    {"image": "a.png", "caption": ["A red square.", "Red!"]},
    {"image": "bad.png", "caption": ["unreadable image"]},
    {"image": "b.png", "caption": ["A BLUE square", "blue", "the blue one"]},
    {"image": "c.png"},  # malformed: no caption
    {"image": "c.png", "caption": ["green"]},
]
TRAIN_LINES = [
    {"image": "a.png", "caption": "a red square", "image_id": "coco_1"},
    {"image": "a.png", "caption": "red", "image_id": "coco_1"},
    {"image": "b.png", "caption": "a blue square", "image_id": "coco_2"},
    {"image": "c.png", "caption": "green", "image_id": "coco_3"},
]


def _write(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    for name, colour in (("a", (220, 30, 30)), ("b", (30, 30, 220)), ("c", (30, 200, 30))):
        Image.new("RGB", (40, 30), colour).save(root / f"{name}.png")
    (root / "bad.png").write_bytes(b"not a png")
    test = root / "test.json"
    test.write_text(json.dumps(TEST_RECORDS))
    train = root / "train.jsonl"
    lines = [json.dumps(r) for r in TRAIN_LINES]
    train.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    return train, test


def test_eval_split_maps_texts_to_images_and_skips_bad_records(tmp_path):
    _, test = _write(tmp_path)
    records, skipped = load_annotations(test)
    assert skipped == 1  # the record without captions
    dataset = RetrievalEvalDataset(records, tmp_path, eval_transform(16), max_words=30)
    assert len(dataset) == 4
    assert dataset.texts == [
        "a red square",
        "red",
        "unreadable image",
        "a blue square",
        "blue",
        "the blue one",
        "green",
    ]
    assert dataset.txt2img == [0, 0, 1, 2, 2, 2, 3]
    assert dataset.img2txt == [[0, 1], [2], [3, 4, 5], [6]]
    item = dataset[2]
    assert item["image"].shape == (3, 16, 16)
    assert (item["index"], item["captions"], item["text_index"]) == (
        2,
        ["a blue square", "blue", "the blue one"],
        [3, 4, 5],
    )
    assert dataset[1] is None and dataset.num_skipped == 1  # the corrupt image


def test_datamodule_batches_images_with_all_their_captions(tmp_path):
    train, test = _write(tmp_path)
    dm = RetrievalDataModule(
        train_annotations=str(train),
        val_annotations=str(test),
        image_root=str(tmp_path),
        image_size=16,
        batch_size=2,
        eval_batch_size=3,
        num_workers=0,
    )
    dm.setup("fit")
    # training: one caption per pair (the bad line skipped), pairs of one image_id share a dense id
    assert isinstance(dm.datasets["train"], ImageTextDataset)
    assert dm.num_skipped_records == {"train": 1, "val": 1}
    assert dm.datasets["train"].image_ids == [0, 0, 1, 2]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["input_ids"].shape[0] == 2

    first, second = list(dm.val_dataloader())
    # the corrupt image (index 1) and its caption are dropped; the others keep all their captions
    assert first["index"].tolist() == [0, 2] and first["image"].shape == (2, 3, 16, 16)
    assert first["text_index"].tolist() == [0, 1, 3, 4, 5]
    assert first["text_image_index"].tolist() == [0, 0, 2, 2, 2]
    assert first["caption"] == ["a red square", "red", "a blue square", "blue", "the blue one"]
    assert first["input_ids"].shape[0] == 5 and (first["input_ids"][:, 0] == 101).all()
    assert first["num_skipped"] == 1
    assert second["index"].tolist() == [3] and second["text_index"].tolist() == [6]
    tokens = dm.tokenizer("green").input_ids
    assert second["input_ids"][0].tolist() == tokens and second["attention_mask"].sum().item() == len(tokens)
    assert torch.equal(second["text_image_index"], torch.tensor([3]))
