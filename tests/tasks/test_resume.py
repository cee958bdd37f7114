"""Exact resume: stop mid-run, resume from the checkpoint, the next losses equal the uninterrupted run's."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from fake_data import write_fake_dataset

from lightning_blip.cli_lightning import BlipCLI

REPO = Path(__file__).resolve().parents[2]


def _losses(log_dir: Path) -> dict[int, tuple[float, ...]]:
    out = {}
    with open(next(log_dir.rglob("metrics.csv"))) as f:
        for row in csv.DictReader(f):
            if row.get("train/loss_itc"):
                out[int(row["step"])] = tuple(
                    float(row[k]) for k in ("train/loss_itc", "train/loss_itm", "train/loss_lm")
                )
    return out


def _fit(tmp_path: Path, name: str, annotations: Path, ckpt: str | None = None) -> BlipCLI:
    args = [
        "-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"),
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
        "--data.init_args.randaugment=true",  # random augmentation, dropout and sampled negatives all resume
        "--model.init_args.lr_scheduler.init_args.warmup_steps=4",
        "--trainer.max_steps=10", "--trainer.log_every_n_steps=1",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / name}",
        "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=6", "--trainer.callbacks.save_top_k=-1",
        f"--trainer.default_root_dir={tmp_path / name}",
    ]  # fmt: skip
    cli = BlipCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    return cli


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path):
    annotations = write_fake_dataset(tmp_path / "images", num_images=32)  # 8 steps per epoch
    full = _fit(tmp_path, "full", annotations)
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=6.ckpt"
    assert checkpoint.is_file()
    resumed = _fit(tmp_path, "resumed", annotations, ckpt=str(checkpoint))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(b) == [6, 7, 8, 9]  # steps 8 and 9 cross into the second epoch
    for step in b:
        torch.testing.assert_close(torch.tensor(b[step]), torch.tensor(a[step]), rtol=1e-5, atol=1e-6)
    for name in ("image_queue", "text_queue", "queue_ptr"):
        torch.testing.assert_close(getattr(resumed.model.model, name), getattr(full.model.model, name))
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_checkpoints_load_with_weights_only(tmp_path):
    annotations = write_fake_dataset(tmp_path / "images", num_images=8)
    args = [
        "-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"),
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
        "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
    ]  # fmt: skip
    cli = BlipCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = next((tmp_path / "ckpt").glob("*.ckpt"))
    checkpoint = torch.load(path, weights_only=True)
    assert "model.image_queue" in checkpoint["state_dict"]
    assert any(k.startswith("model.visual_encoder_m.") for k in checkpoint["state_dict"])  # momentum kept
    assert checkpoint["callbacks"]
    from lightning_blip.tasks import MEDPretrain

    restored = MEDPretrain.load_from_checkpoint(path, weights_only=True)
    torch.testing.assert_close(restored.model.blip.temp, cli.model.model.blip.temp)


def test_module_built_in_python_saves_plain_hyperparameters(tmp_path):
    from conftest import tiny_blip

    from lightning_blip.tasks import MEDPretrain

    module = MEDPretrain(tiny_blip(), queue_size=8)
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, tmp_path / "m.ckpt"
    )
    loaded = torch.load(tmp_path / "m.ckpt", weights_only=True)
    rebuilt = MEDPretrain(**loaded["hyper_parameters"])
    rebuilt.load_state_dict(loaded["state_dict"])
    assert rebuilt.model.blip.config == module.model.blip.config
