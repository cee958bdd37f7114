"""QFormerStage1 glue: frozen encoder without optimiser state or checkpoint space, losses, evaluation."""

from __future__ import annotations

import lightning as L
import torch
from conftest import tiny_blip2
from fake_data import write_fake_dataset

from lightning_blip.callbacks import HardNegativeMining
from lightning_blip.data import ImageTextDataModule
from lightning_blip.tasks import QFormerStage1

FROZEN = "model.blip2.image_encoder.visual_encoder."


def _datamodule(tmp_path) -> ImageTextDataModule:
    annotations = write_fake_dataset(tmp_path / "images", num_images=16)
    return ImageTextDataModule(
        str(annotations),
        val_annotations=str(annotations),
        image_root=str(annotations.parent),
        image_size=32,
        batch_size=4,
        num_workers=0,
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    base = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**base, **kw})


def test_frozen_encoder_has_no_optimizer_state_and_stays_out_of_checkpoints(tmp_path):
    module = QFormerStage1(tiny_blip2())
    frozen_before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(FROZEN)}
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    assert [type(c) for c in trainer.callbacks].count(HardNegativeMining) == 1
    assert module.negative_sampler.pool == "global"

    optimizer = trainer.optimizers[0]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = [p for n, p in module.named_parameters() if n.startswith(FROZEN)]
    assert frozen and not any(id(p) in optimised for p in frozen)
    assert all(p.grad is None for p in frozen)
    for key, value in module.state_dict().items():
        if key.startswith(FROZEN):
            torch.testing.assert_close(value, frozen_before[key])  # the frozen encoder did not move

    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(k.startswith(FROZEN) for k in checkpoint["state_dict"])
    assert checkpoint["frozen_weights"]["sources"][FROZEN]["model_name"] == "vit_tiny_patch16_224"
    full = sum(v.numel() for v in module.state_dict().values())
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) < full

    # loads back (the frozen encoder comes from its source: here the same random init, seeded)
    restored = QFormerStage1.load_from_checkpoint(path, weights_only=True)
    for key, value in module.state_dict().items():
        if not key.startswith(FROZEN):
            torch.testing.assert_close(restored.state_dict()[key], value, msg=key)


def test_losses_logged_and_zero_shot_retrieval_evaluated(tmp_path):
    module = QFormerStage1(tiny_blip2())
    trainer = _trainer(tmp_path, max_steps=1, enable_checkpointing=False, num_sanity_val_steps=0)
    datamodule = _datamodule(tmp_path)
    trainer.fit(module, datamodule=datamodule)
    assert {"train/loss_itc", "train/loss_itm", "train/loss_itg"} <= set(trainer.callback_metrics)
    (metrics,) = trainer.validate(module, datamodule=datamodule)
    assert 0.0 <= metrics["val/i2t_r1"] <= 1.0 and 0.0 <= metrics["val/t2i_r1"] <= 1.0
