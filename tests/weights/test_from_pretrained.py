"""``Model.from_pretrained(path)`` on our own checkpoint formats; the format is read from the path."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
from conftest import tiny_blip, tiny_blip2
from fake_data import write_fake_dataset
from safetensors.torch import save_file

from lightning_blip.data import ImageTextDataModule
from lightning_blip.models.blip import BlipModel, BlipVQA
from lightning_blip.models.blip2 import Blip2Model
from lightning_blip.models.shared.pretrained import detect_format
from lightning_blip.tasks import MEDPretrain, QFormerStage1

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit_one_step(module: L.LightningModule, tmp_path) -> L.LightningModule:
    annotations = write_fake_dataset(tmp_path / "images", num_images=8)
    data = ImageTextDataModule(
        str(annotations), image_root=str(annotations.parent), image_size=32, batch_size=4, num_workers=0
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    return module.eval()


def test_blip_model_from_a_pretraining_checkpoint_equals_the_trained_model(tmp_path):
    task = _fit_one_step(MEDPretrain(tiny_blip(), queue_size=8), tmp_path)
    assert detect_format(tmp_path / "last.ckpt") == "lightning"
    model = BlipModel.from_pretrained(tmp_path / "last.ckpt").eval()
    assert model.config == task.model.blip.config
    trained = task.model.blip.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)


def test_blip2_model_from_a_stage1_checkpoint_takes_the_frozen_vit_from_its_source(tmp_path):
    vit_file = tmp_path / "vit.safetensors"
    source = Blip2Model(tiny_blip2())
    save_file(source.image_encoder.visual_encoder.vit.state_dict(), str(vit_file))
    config = replace(tiny_blip2(), vision=replace(tiny_blip2().vision, weights=str(vit_file)))
    task = _fit_one_step(QFormerStage1(config), tmp_path)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert not any("visual_encoder." in k for k in checkpoint["state_dict"])  # frozen: not written

    model = Blip2Model.from_pretrained(tmp_path / "last.ckpt").eval()
    trained = task.model.blip2.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)


def test_a_missing_trainable_key_is_named_unless_not_strict(tmp_path):
    _fit_one_step(MEDPretrain(tiny_blip(), queue_size=8), tmp_path)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    del checkpoint["state_dict"]["model.blip.itm_head.weight"]
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    with pytest.raises(KeyError, match="itm_head.weight"):
        BlipModel.from_pretrained(tmp_path / "damaged.ckpt")
    BlipModel.from_pretrained(tmp_path / "damaged.ckpt", strict=False)


def test_the_wrong_model_class_for_a_checkpoint_is_refused_by_name(tmp_path):
    _fit_one_step(MEDPretrain(tiny_blip(), queue_size=8), tmp_path)
    with pytest.raises((KeyError, ValueError), match="question_encoder|answer_decoder|BlipVQA"):
        BlipVQA.from_pretrained(tmp_path / "last.ckpt")


class Payload:  # needs arbitrary unpickling to load
    pass


def test_from_pretrained_refuses_a_file_that_needs_arbitrary_unpickling(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(ValueError, match="needs arbitrary unpickling"):
        BlipModel.from_pretrained(path, config=tiny_blip())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint" * 8, "truncated"])
def test_an_unreadable_file_is_refused_by_name(tmp_path, content):
    path = tmp_path / "model.pth"
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} is not a readable torch checkpoint"):
        BlipModel.from_pretrained(path, config=tiny_blip())


def test_an_unknown_directory_names_what_it_lacks(tmp_path):
    with pytest.raises(ValueError, match=r"\.metadata or config\.json"):
        BlipModel.from_pretrained(tmp_path)


def test_a_lightning_checkpoint_exports_to_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lightning_blip.convert import command as convert

    task = _fit_one_step(MEDPretrain(tiny_blip(), queue_size=8), tmp_path)
    out = tmp_path / "hf"
    convert.main(
        [
            "--from",
            "ours",
            "--to",
            "transformers",
            "--task",
            "captioning",
            str(tmp_path / "last.ckpt"),
            str(out),
        ]
    )
    hf = transformers.BlipForConditionalGeneration.from_pretrained(out).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = task.model.blip.forward_image(pixels)
    torch.testing.assert_close(
        hf.vision_model(pixel_values=pixels).last_hidden_state, expected, atol=1e-5, rtol=0
    )
