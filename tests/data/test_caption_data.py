"""CaptionDataModule: training pairs, one evaluation item per image with its raw references, skips."""

from __future__ import annotations

import json
import logging

import torch
from fake_data import write_fake_caption_eval, write_fake_dataset

from lightning_blip.data import CaptionDataModule, CaptionEvalDataset
from lightning_blip.data.annotations import ImageTextRecord
from lightning_blip.data.caption import collate_caption_eval


def _datamodule(tmp_path) -> CaptionDataModule:
    train = write_fake_dataset(tmp_path / "images", num_images=8, corrupt=1)
    val = write_fake_caption_eval(train, corrupt=1)
    records = json.loads(val.read_text())
    records.insert(0, {"image": "0.png"})  # malformed: no caption
    val.write_text(json.dumps(records))
    dm = CaptionDataModule(
        train_annotations=str(train),
        val_annotations=str(val),
        test_annotations=str(val),
        image_root=str(train.parent),
        image_size=32,
        batch_size=4,
        eval_batch_size=3,
        num_workers=0,
    )
    return dm


def test_training_items_are_pairs_and_evaluation_items_are_images_with_raw_references(tmp_path, caplog):
    dm = _datamodule(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.num_skipped_records == {"train": 0, "val": 1}
    assert "skipping malformed record" in caplog.text
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 32, 32) and len(train["caption"]) == 4
    # pre_caption: lowercase, "!" blanked ("a red square, number 0!" -> "a red square, number 0")
    assert all(c == c.lower() and "!" not in c for c in train["caption"])

    val = dm.datasets["val"]
    assert isinstance(val, CaptionEvalDataset) and len(val) == 9  # 8 images + 1 unreadable
    with caplog.at_level(logging.WARNING):
        batches = list(dm.val_dataloader())
    assert "skipping image" in caplog.text and sum(b["num_skipped"] for b in batches) == 1
    references = [r for b in batches for r in b["references"]]
    assert references[0] == ["A red square, number 0!", "A red box."]  # as written, not pre_caption-ed
    assert len(references) == 8 and all(len(b["image_id"]) == len(b["index"]) for b in batches)
    assert [i for b in batches for i in b["image_id"]][:2] == ["0.png", "1.png"]
    index = torch.cat([b["index"] for b in batches])
    assert index.tolist() == [0, 2, 3, 4, 5, 6, 7, 8]  # the unreadable image (index 1) is not evaluated


def test_predict_reads_the_test_split_and_a_fully_skipped_batch_is_empty(tmp_path):
    dm = _datamodule(tmp_path)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["num_skipped"] == 1
    empty = collate_caption_eval([None, None])
    assert empty["image"].shape == (0, 3, 0, 0) and empty["references"] == [] and empty["num_skipped"] == 2


def test_evaluation_merges_the_records_of_one_image(tmp_path):
    """A val file with one record per caption (the train file's layout) is still one item per image."""
    train = write_fake_dataset(tmp_path / "images", num_images=3)
    records = json.loads(train.read_text())
    records.append({**records[0], "caption": "another caption of image 0"})
    dataset = CaptionEvalDataset(
        [ImageTextRecord(r["image"], (r["caption"],), str(r.get("image_id", r["image"]))) for r in records],
        train.parent,
        lambda image: torch.zeros(3, 8, 8),
    )
    assert len(dataset) == 3
    assert dataset[0]["references"] == [records[0]["caption"], "another caption of image 0"]
