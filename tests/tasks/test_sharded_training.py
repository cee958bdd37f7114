"""MEDPretrain on 2 CPU ranks: FSDP2 (ModelParallelStrategy) gives the same losses as DDP.

The ITM negatives are sampled (multinomial) from the global pool: the per-step seed from (seed, step,
rank) makes the draws, and so the losses, the same under both strategies."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_fake_dataset

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp2": [
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1",
    ],
}
DETERMINISTIC = """
trainer:
  max_steps: 2
  log_every_n_steps: 1
  val_check_interval: 2
  num_sanity_val_steps: 0
  callbacks:
    - class_path: lightning_blip.callbacks.MomentumEncoder
    - class_path: lightning_blip.callbacks.HardNegativeMining
      init_args: {strategy: sample, pool: global}
model:
  init_args:
    config:
      text: {dropout: 0.0, attention_dropout: 0.0}
"""


def _run(strategy: str, tmp_path: Path, annotations: Path) -> list[dict]:
    override = tmp_path / "deterministic.yaml"
    override.write_text(DETERMINISTIC)
    cmd = [
        sys.executable, "-m", "lightning_blip", "fit",
        "-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"), "-c", str(override),
        "--trainer.devices=2", *STRATEGIES[strategy],
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / strategy}",
        f"--trainer.default_root_dir={tmp_path / strategy}",
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
        f"--data.init_args.val_annotations=[{annotations}]",
    ]  # fmt: skip
    result = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(next((tmp_path / strategy).rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    validation = [row for row in rows if row.get("val/i2t_r1")]
    assert len(validation) == 1  # retrieval validation ran through the sharded model
    return [row for row in rows if row.get("train/loss")] + validation


@pytest.mark.slow
def test_fsdp2_matches_ddp_on_two_cpu_ranks(tmp_path):
    annotations = write_fake_dataset(tmp_path / "images", num_images=32)
    ddp, fsdp = _run("ddp", tmp_path, annotations), _run("fsdp2", tmp_path, annotations)
    assert [r["step"] for r in ddp] == [r["step"] for r in fsdp] == ["0", "1", "1"]
    for a, b in zip(ddp[:2], fsdp[:2]):
        for key in ("train/loss_itc", "train/loss_itm", "train/loss_lm"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["step"], key)
    for key in ("val/i2t_r1", "val/t2i_r1"):
        assert float(ddp[2][key]) == pytest.approx(float(fsdp[2][key]))
