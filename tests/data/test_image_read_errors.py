"""Config errors are not corrupt images: transform errors propagate, DataModules check their fields,
and an evaluation split with no readable image fails instead of passing empty."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fake_data import write_fake_dataset
from fake_vqa import write_fake_vqa
from PIL import Image, PngImagePlugin

from lightning_blip.data import CaptionDataModule, RetrievalDataModule, VQADataModule
from lightning_blip.data.annotations import ImageTextRecord
from lightning_blip.data.datamodule import ImageTextDataModule
from lightning_blip.data.dataset import ImageTextDataset
from lightning_blip.data.retrieval import RetrievalEvalDataset
from lightning_blip.data.transforms import eval_transform, train_transform


def _records(root: Path, readable: int, missing: int) -> list[ImageTextRecord]:
    for i in range(readable):
        Image.new("RGB", (20, 20), (10 * i, 50, 90)).save(root / f"ok{i}.png")
    names = [f"ok{i}.png" for i in range(readable)] + [f"gone{i}.png" for i in range(missing)]
    return [ImageTextRecord(name, ("a picture",), name) for name in names]


def _raise_os_error(image: Image.Image) -> torch.Tensor:
    raise OSError("the transform's own error")


@pytest.mark.parametrize(
    ("make_transform", "error", "match"),
    [
        (lambda: eval_transform(0), ValueError, "height and width"),  # image_size=0
        (lambda: train_transform(16, scale=(0.5, 0.25)), RuntimeError, "uniform_"),  # crop_scale=(0.5, 0.25)
        (lambda: _raise_os_error, OSError, "the transform's own error"),
    ],
)
@pytest.mark.parametrize("substitute_corrupt", [False, True])
def test_an_error_of_the_transform_propagates_instead_of_skipping_the_image(
    tmp_path: Path, make_transform: Callable, error: type, match: str, substitute_corrupt: bool
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision warns of a (max, min) scale, then fails on it
        transform = make_transform()
    dataset = ImageTextDataset(
        _records(tmp_path, 3, 0), tmp_path, transform, substitute_corrupt=substitute_corrupt
    )
    with pytest.raises(error, match=match):
        dataset[(0, 1)]
    assert dataset.num_skipped == 0


@pytest.mark.parametrize("error", [ValueError, SyntaxError])
def test_value_and_syntax_errors_of_pil_while_decoding_skip_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    def broken(self: Image.Image) -> None:
        raise error("broken PNG file")

    Image.new("RGB", (20, 20)).save(tmp_path / "ok.jpg")
    records = [ImageTextRecord("ok.jpg", ("x",), "a")] + _records(tmp_path, 1, 0)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    dataset = ImageTextDataset(records, tmp_path, eval_transform(8))
    assert dataset[0] is not None and dataset[1] is None and dataset.num_skipped == 1


@pytest.mark.parametrize("kind", ["missing", "not an image", "a folder", "a decompression bomb"])
def test_a_file_that_cannot_be_opened_is_still_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    records = _records(tmp_path, 2, 0) + [ImageTextRecord("bad.png", ("x",), "bad")]
    if kind == "not an image":
        (tmp_path / "bad.png").write_bytes(b"not a png")
    elif kind == "a folder":
        (tmp_path / "bad.png").mkdir()
    elif kind == "a decompression bomb":
        Image.new("RGB", (200, 200)).save(tmp_path / "bad.png")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40,000 pixels > 2 x 1000: an error
    dataset = ImageTextDataset(records, tmp_path, eval_transform(8))
    with caplog.at_level(logging.WARNING):
        assert dataset[2] is None
    assert dataset.num_skipped == 1 and len(caplog.records) == 1 and "bad.png" in caplog.text


@pytest.mark.parametrize("missing", [1, 3, 40])
def test_an_evaluation_set_with_no_readable_image_raises_naming_image_root(
    tmp_path: Path, missing: int
) -> None:
    dataset = ImageTextDataset(_records(tmp_path, 0, missing), tmp_path, eval_transform(8))
    with pytest.raises(RuntimeError, match=f"image_root={tmp_path}"):
        dataset[0]
    retrieval = RetrievalEvalDataset(_records(tmp_path, 0, missing), tmp_path, eval_transform(8))
    with pytest.raises(RuntimeError, match=f"image_root={tmp_path}"):
        retrieval[missing - 1]


def test_an_evaluation_set_with_a_readable_image_skips_the_others_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(tmp_path, 1, 6)[::-1]  # the readable image last
    dataset = ImageTextDataset(records, tmp_path, eval_transform(8))
    with caplog.at_level(logging.WARNING):
        assert dataset[0] is None  # checks the others (all of them here) until one is readable
    assert dataset.num_skipped == 1 and len(caplog.records) == 1 and "gone5.png" in caplog.text
    assert [dataset[i] is None for i in range(7)] == [True] * 6 + [False]
    assert dataset.num_skipped == 7  # item 0 twice


def test_a_caption_validation_split_with_no_readable_image_fails_instead_of_passing_empty(
    tmp_path: Path,
) -> None:
    train = write_fake_dataset(tmp_path / "images", num_images=4)
    val = tmp_path / "images" / "val.json"
    val.write_text(json.dumps([{"image": f"elsewhere/{i}.png", "caption": ["a square"]} for i in range(5)]))
    dm = CaptionDataModule(
        str(train), val_annotations=str(val), image_root=str(train.parent), image_size=16, num_workers=0
    )
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=f"image_root={train.parent}"):
        list(dm.val_dataloader())


SIZE_ERRORS = [
    ({"image_size": 0}, "image_size"),
    ({"image_size": -224}, "image_size"),
    ({"crop_scale": (1.0, 0.5)}, "crop_scale"),
    ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
    ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
    ({"crop_scale": (0.5,)}, "crop_scale"),
    ({"batch_size": 0}, "batch_size"),
    ({"eval_batch_size": 0}, "eval_batch_size"),
]


@pytest.mark.parametrize(
    "module", [ImageTextDataModule, CaptionDataModule, RetrievalDataModule, VQADataModule]
)
@pytest.mark.parametrize(("bad", "field"), [*SIZE_ERRORS, ({"max_words": 0}, "max_words")])
def test_datamodules_refuse_bad_sizes_at_construction_naming_the_field(
    module: type, bad: dict, field: str
) -> None:
    if module is VQADataModule and field == "max_words":
        bad, field = {"max_question_words": 0}, "max_question_words"
    with pytest.raises(ValueError, match=f"^{field} must be"):
        module(image_root="/placeholder/images", **bad)


def test_datamodules_accept_placeholder_folders_until_setup(tmp_path: Path) -> None:
    train = write_fake_dataset(tmp_path / "images", num_images=4)
    for module in (ImageTextDataModule, CaptionDataModule, RetrievalDataModule):
        dm = module(str(train), image_root=str(tmp_path / "nope"), image_size=16)  # a recipe's placeholder
        with pytest.raises(FileNotFoundError, match=f"image_root {tmp_path / 'nope'} is not a folder"):
            dm.setup("fit")
        dm = module(str(train), image_root=str(train), image_size=16)  # a file, not a folder
        with pytest.raises(FileNotFoundError, match="image_root .*train.json is not a folder"):
            dm.setup("fit")


def test_vqa_checks_both_image_folders_at_setup(tmp_path: Path) -> None:
    paths = write_fake_vqa(tmp_path / "vqa", num_images=2)
    files = {"train_questions": str(paths["questions"]), "train_annotations": str(paths["annotations"])}
    args = {"image_size": 16, "num_workers": 0, **files}
    dm = VQADataModule(image_root=str(tmp_path / "nope"), **args)
    with pytest.raises(FileNotFoundError, match="image_root .*nope is not a folder"):
        dm.setup("fit")
    dm = VQADataModule(image_root=str(paths["image_root"]), vg_image_root=str(tmp_path / "no_vg"), **args)
    with pytest.raises(FileNotFoundError, match="vg_image_root .*no_vg is not a folder"):
        dm.setup("fit")
    dm = VQADataModule(image_root=str(paths["image_root"]), vg_image_root=str(tmp_path), **args)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4


_TWO_EPOCHS = """
import logging, sys
from torch.utils.data import DataLoader
from lightning_blip.data.datamodule import ImageTextDataModule

logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
dm = ImageTextDataModule(sys.argv[1], image_root=sys.argv[2], image_size=16, batch_size=4, num_workers=2)
dm.setup("fit")
persistent = dm.train_dataloader()
fresh = DataLoader(persistent.dataset, batch_size=4, sampler=persistent.sampler, num_workers=2,
                   collate_fn=persistent.collate_fn, persistent_workers=False)
for loader in (persistent, fresh):
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        print(sum(batch["num_skipped"] for batch in loader))
"""


def test_an_unreadable_image_is_warned_once_per_run_and_counted_every_epoch(tmp_path: Path) -> None:
    """Two unreadable files, two workers, four epochs (persistent and fresh workers): two warnings."""
    import subprocess
    import sys

    annotations = write_fake_dataset(tmp_path, num_images=14, corrupt=2)  # 16 items: 4 full batches
    done = subprocess.run(
        [sys.executable, "-c", _TWO_EPOCHS, str(annotations), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2", "2", "2"]  # every epoch counts both skips
    warned = [line for line in done.stderr.splitlines() if line.startswith("skipping image")]
    assert len(warned) == 2 and len({line.split()[2] for line in warned}) == 2, done.stderr
