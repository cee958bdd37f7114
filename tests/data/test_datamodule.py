import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from lightning_blip.data.datamodule import ImageTextDataModule

BATCH = 4


@pytest.fixture
def fake_data(tmp_path: Path) -> dict[str, str]:
    """10 images; 12 train pairs (two images have two captions), 5 val pairs, one malformed record."""
    for i in range(10):
        Image.new("RGB", (12 + i, 10), (20 * i, 255 - 20 * i, 7 * i)).save(tmp_path / f"{i}.png")
    train = [
        {"image": f"{i}.png", "caption": [f"Image {i}.", f"picture {i}"] if i < 2 else f"image {i}"}
        for i in range(10)
    ]
    train.append({"caption": "no image"})
    (tmp_path / "train.json").write_text(json.dumps(train))
    val = "\n".join(json.dumps({"image": f"{i}.png", "caption": f"val {i}", "image_id": i}) for i in range(5))
    (tmp_path / "val.jsonl").write_text(val)
    return {"train": str(tmp_path / "train.json"), "val": str(tmp_path / "val.jsonl"), "root": str(tmp_path)}


def _datamodule(data: dict[str, str], **kw) -> ImageTextDataModule:
    args = {
        "train_annotations": data["train"],
        "val_annotations": data["val"],
        "image_root": data["root"],
        "image_size": 16,
        "batch_size": BATCH,
        "num_workers": 0,
        "randaugment": True,
        "seed": 5,
    }
    return ImageTextDataModule(**{**args, **kw})


def _batches(loader) -> list[tuple[list[int], torch.Tensor]]:
    return [(batch["index"].tolist(), batch["image"]) for batch in loader]


def _assert_same(a, b) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_train_batches(fake_data: dict[str, str]) -> None:
    dm = _datamodule(fake_data)
    dm.setup("fit")
    assert dm.num_skipped_records == {"train": 1, "val": 0}
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # 12 pairs, drop_last
    batch = batches[0]
    assert batch["image"].shape == (BATCH, 3, 16, 16)
    assert batch["input_ids"].shape[0] == BATCH and batch["input_ids"][0, 0] == 101
    assert batch["num_skipped"] == 0
    indices = [i for b in batches for i in b["index"].tolist()]
    assert sorted(indices) == list(range(12))
    # the two captions of image 0 (items 0 and 1) share an image id
    ids = {i: int(d) for b in batches for i, d in zip(b["index"].tolist(), b["image_id"].tolist())}
    assert ids[0] == ids[1] != ids[2]


def test_training_order_and_augmentation_repeat_for_the_same_seed(fake_data: dict[str, str]) -> None:
    first, second, other = _datamodule(fake_data), _datamodule(fake_data), _datamodule(fake_data, seed=6)
    for dm in (first, second, other):
        dm.setup("fit")
    reference = _batches(first.train_dataloader())
    _assert_same(reference, _batches(second.train_dataloader()))
    assert [i for i, _ in _batches(other.train_dataloader())] != [i for i, _ in reference]


def test_val_batches_in_order_without_drop_last(fake_data: dict[str, str]) -> None:
    dm = _datamodule(fake_data, eval_batch_size=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0]["caption"] == ["val 0", "val 1"]


def test_missing_splits(fake_data: dict[str, str]) -> None:
    dm = _datamodule(fake_data, val_annotations=None)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    with pytest.raises(RuntimeError, match="test"):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="test_annotations"):
        dm.setup("test")
    assert dm.state_dict() == {}


def test_an_empty_training_set_fails_at_setup(fake_data: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_annotations is not set"):
        _datamodule(fake_data, train_annotations=[]).setup("fit")  # the recipes' placeholder
    (tmp_path / "empty.jsonl").write_text('{"caption": "no image"}\n')
    with pytest.raises(ValueError, match="train_annotations .*empty.jsonl.*no valid record"):
        _datamodule(fake_data, train_annotations=str(tmp_path / "empty.jsonl")).setup("fit")


@pytest.mark.parametrize(("epoch", "batches_done"), [(0, 1), (1, 2)])
def test_load_state_dict_skips_the_batches_done(
    fake_data: dict[str, str], epoch: int, batches_done: int
) -> None:
    uninterrupted = _datamodule(fake_data)
    uninterrupted.setup("fit")
    loader = uninterrupted.train_dataloader()
    loader.sampler.set_epoch(epoch)
    expected = _batches(loader)[batches_done:]
    resumed = _datamodule(fake_data)
    resumed.setup("fit")
    resumed.load_state_dict(
        {"epoch": epoch, "batches_done": batches_done, "batch_size": BATCH, "world_size": 1}
    )
    _assert_same(_batches(resumed.train_dataloader()), expected)
    # the resume point is used once: the next loader starts the epoch from its beginning again
    assert len(_batches(resumed.train_dataloader())) == 3


class _Recorder(L.LightningModule):
    """Records the items and images of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple[int, list[int], float]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch["index"].tolist(), batch["image"].sum().item()))
        return self.layer(batch["image"].mean((2, 3))).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    data: dict[str, str], ckpt_path: str | None = None, callbacks=(), num_workers: int = 0, **kw
) -> _Recorder:
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        **kw,
    )
    trainer.fit(model, _datamodule(data, val_annotations=None, num_workers=num_workers), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize(
    ("stop", "num_workers"),
    [("step=1", 0), ("step=3", 2), ("step=4", 2), ("epoch=1", 0)],
    ids=["mid-epoch-0", "last-batch-of-epoch-0", "mid-epoch-1-workers", "epoch-end"],
)
def test_lightning_resume_is_exact(
    fake_data: dict[str, str], tmp_path: Path, stop: str, num_workers: int
) -> None:
    full = _fit(fake_data, max_epochs=2).seen
    assert len(full) == 6
    kind, count = stop.split("=")
    if kind == "step":
        callback = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=int(count), save_top_k=-1)
        first = _fit(fake_data, callbacks=[callback], max_steps=int(count), num_workers=num_workers).seen
    else:
        callback = ModelCheckpoint(tmp_path / "ckpt", every_n_epochs=1, save_on_train_epoch_end=True)
        first = _fit(fake_data, callbacks=[callback], max_epochs=int(count)).seen
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    assert "ImageTextDataModule" in torch.load(ckpt, weights_only=False)
    rest = _fit(fake_data, ckpt_path=str(ckpt), max_epochs=2, num_workers=num_workers).seen
    assert [(e, i) for e, i, _ in first + rest] == [(e, i) for e, i, _ in full]
    assert [s for *_, s in first + rest] == [s for *_, s in full]  # same augmentations


def test_resume_with_another_batch_size_warns(
    fake_data: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    dm = _datamodule(fake_data)
    dm.setup("fit")
    dm.load_state_dict({"epoch": 0, "batches_done": 1, "batch_size": 2, "world_size": 1})
    dm.train_dataloader()
    assert any("not an exact resume" in r.getMessage() for r in caplog.records)


def test_dropped_captions_are_counted_and_logged_per_split(
    fake_data: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = json.loads(Path(fake_data["train"]).read_text())
    train[0]["caption"] += ["...", "!!"]
    train[5]["caption"] = [train[5]["caption"], "-"]
    Path(fake_data["train"]).write_text(json.dumps(train))
    dm = _datamodule(fake_data)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.num_skipped_records == {"train": 1, "val": 0}
    assert dm.num_dropped_captions == {"train": 3, "val": 0}
    assert "train annotations: dropped 3 captions without a word" in caplog.text
    assert len(dm.datasets["train"]) == 12  # the pairs of the kept captions only
