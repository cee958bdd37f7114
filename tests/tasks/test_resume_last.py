"""``lightning_blip fit --ckpt_path=last`` after a SIGKILL: the run's last checkpoint, the same losses as
an uninterrupted run, one metrics file; no last checkpoint stops with an error."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from fake_data import write_fake_dataset
from lightning.pytorch.loggers import CSVLogger

from lightning_blip.cli_lightning import BlipCLI
from lightning_blip.resume import resume_last

REPO = Path(__file__).resolve().parents[2]
LOSSES = ("train/loss_itc", "train/loss_itm", "train/loss_lm")


def _args(root: Path, annotations: Path) -> list[str]:
    return [
        "-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"),
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
        "--data.init_args.randaugment=true",
        "--model.init_args.lr_scheduler.init_args.warmup_steps=4",
        "--trainer.max_steps=6", "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={root}",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
        "--trainer.logger.flush_logs_every_n_steps=1",  # the killed run's rows reach the file
        "--trainer.callbacks.every_n_train_steps=3",  # the recipe's ModelCheckpoint (save_last: true)
    ]  # fmt: skip


def _rows(metrics: Path) -> list[tuple[int, tuple[float, ...]]]:
    with metrics.open() as f:
        return [
            (int(r["step"]), tuple(float(r[k]) for k in LOSSES))
            for r in csv.DictReader(f)
            if r.get(LOSSES[0])
        ]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "lightning_blip", "fit", *args]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)


def test_fit_resumes_by_last_after_a_kill(tmp_path):
    annotations = write_fake_dataset(tmp_path / "images", num_images=16)  # 4 steps per epoch
    full = BlipCLI(args=_args(tmp_path / "full", annotations), run=False)
    full.trainer.fit(full.model, datamodule=full.datamodule)
    expected = dict(_rows(tmp_path / "full" / "lightning_logs" / "version_0" / "metrics.csv"))
    assert sorted(expected) == list(range(6))

    root = tmp_path / "run"
    killed = _cli(
        [
            *_args(root, annotations),
            "--trainer.callbacks+=kill_switch.KillAtStep",
            "--trainer.callbacks.step=5",
        ]
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = root / "lightning_logs" / "version_0"
    assert (
        torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    )  # mid-epoch

    resumed = _cli([*_args(root, annotations), "--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {folder / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert "not resumable" not in resumed.stderr  # the DataModule restores the position within the epoch
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0"]  # no version_1
    rows = _rows(folder / "metrics.csv")
    # the killed run's steps 0-4, then the resumed run's 3-5 (3 and 4 again: logged after the checkpoint)
    assert [step for step, _ in rows] == [*range(5), *range(3, 6)]
    for step, losses in rows:
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected[step]), rtol=1e-5, atol=1e-6)


def test_fit_by_last_without_a_last_checkpoint_stops(tmp_path):
    annotations = write_fake_dataset(tmp_path / "images", num_images=8)
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no last"):
        BlipCLI(args=["fit", *_args(tmp_path, annotations), "--ckpt_path=last"])
    assert not list(tmp_path.rglob("metrics.csv"))  # nothing trained


def test_last_is_the_newest_over_versions_and_pins_that_version(tmp_path):
    for version, mtime in (("version_0", 2_000_000), ("version_1", 3_000_000), ("version_2", 1_000_000)):
        path = tmp_path / "logs" / "lightning_logs" / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    logger = CSVLogger(save_dir=tmp_path / "logs")
    trainer = L.Trainer(logger=logger, default_root_dir=tmp_path, accelerator="cpu")
    newest = tmp_path / "logs" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert resume_last(trainer) == newest
    assert logger.version == 1 and Path(logger.log_dir) == newest.parent.parent  # not a new version_3
