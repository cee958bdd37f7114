"""Predict inputs of the DataModules: records that may lack fields, a folder of images, checks at construction."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lightning_blip.data import CaptionDataModule, ImageTextDataModule, RetrievalDataModule, VQADataModule
from lightning_blip.data.annotations import ImageTextRecord, parse_record
from lightning_blip.data.image_folder import folder_records


def test_records_may_lack_only_the_fields_the_split_allows():
    assert parse_record({"image": "a.jpg", "image_id": 3}, frozenset({"caption"})) == ImageTextRecord(
        "a.jpg", (), "3"
    )
    assert parse_record({"caption": "a dog"}, frozenset({"caption", "image"})).image is None
    with pytest.raises(ValueError, match="'caption'"):  # training and evaluation still need references
        parse_record({"image": "a.jpg"})
    with pytest.raises(ValueError, match="'image'"):  # captioning needs the image
        parse_record({"caption": "a dog"}, frozenset({"caption"}))
    with pytest.raises(ValueError, match="neither"):
        parse_record({"image_id": 1}, frozenset({"caption", "image"}))


def test_a_folder_gives_every_image_file_under_it_sorted_by_relative_path(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.webp", "A.JPEG", "broken.png"):
        (tmp_path / name).write_bytes(b"read later: an unreadable one is skipped then")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.png").mkdir()  # a folder is no image
    assert [(r.image, r.image_id, r.captions) for r in folder_records(tmp_path)] == [
        ("A.JPEG", "A.JPEG", ()),
        ("b.png", "b.png", ()),
        ("broken.png", "broken.png", ()),
        ("sub/a.webp", "sub/a.webp", ()),
    ]


def test_predict_falls_back_to_the_test_annotations_and_uses_the_folder_as_root(tmp_path: Path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    annotations = tmp_path / "test.json"
    annotations.write_text('[{"image": "x.png", "caption": "a"}, {"image": "y.png"}]')
    dm = CaptionDataModule(test_annotations=str(annotations), image_root=str(tmp_path), num_workers=0)
    dm.setup("predict")  # the record without a caption is kept for predict
    assert [r.image for r in dm.datasets["predict"].records] == ["x.png", "y.png"]
    dm.setup("test")  # test still needs references: that record is malformed there
    assert [r.image for r in dm.datasets["test"].records] == ["x.png"] and dm.num_skipped_records["test"] == 1
    folder = CaptionDataModule(predict_images=str(tmp_path), num_workers=0)
    folder.setup("predict")
    assert folder.datasets["predict"][0]["image_id"] == "x.png"


@pytest.mark.parametrize(
    "kwargs, field, error",
    [
        ({"predict_annotations": ["missing.json"]}, "predict_annotations", FileNotFoundError),
        ({"predict_images": "missing_folder"}, "predict_images", FileNotFoundError),
        ({"predict_images": ".", "predict_annotations": "x.json"}, "predict_images", ValueError),
    ],
)
def test_bad_predict_inputs_fail_at_construction_naming_the_field(kwargs, field, error):
    for cls in (CaptionDataModule, RetrievalDataModule):
        with pytest.raises(error, match=field):
            cls(**kwargs)


def test_predict_images_needs_a_module_that_predicts_from_images_alone(tmp_path: Path):
    with pytest.raises(ValueError, match="predict_images"):
        ImageTextDataModule(predict_images=str(tmp_path))  # its predict embeds image-caption pairs
    with pytest.raises(FileNotFoundError, match="predict_questions"):
        VQADataModule(predict_questions="missing.jsonl")
