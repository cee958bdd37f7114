"""A distributed-checkpoint directory is checked before Lightning resumes from it with torch's reader."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from fake_data import write_fake_dataset
from torch.distributed.checkpoint.api import CheckpointException

from lightning_blip.weights.distributed import check_distributed_checkpoint, read_distributed_state_dict

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """An arbitrary class: loading it back would need an unrestricted unpickler."""


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _directory(path: Path, **values) -> Path:
    state = {"state_dict": {"w": torch.randn(3, 4)}, "optimizer_0": {"param_groups": [{"lr": 0.1}]}, **values}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=path, no_dist=True)
    torch.save({"epoch": 0, "global_step": 1}, path / "meta.pt")  # what Lightning writes beside the shards
    return path


def test_a_plain_directory_passes_without_reading_its_tensors(tmp_path):
    ckpt = _directory(tmp_path / "ckpt")
    metadata = dcp.FileSystemReader(ckpt).read_metadata()  # our own file: torch's reader is fine here
    tensors = [i for i in metadata.storage_data if i.fqn == "state_dict.w"]
    assert tensors
    for index in tensors:  # garble the tensor's bytes: the check must not need them
        info = metadata.storage_data[index]
        with open(ckpt / info.relative_path, "r+b") as f:
            f.seek(info.offset)
            f.write(b"\xff" * info.length)
    with pytest.raises(CheckpointException):  # reading the garbled tensor fails
        read_distributed_state_dict(ckpt)
    check_distributed_checkpoint(ckpt)


def test_metadata_that_would_run_code_is_refused(tmp_path):
    ckpt, marker = _directory(tmp_path / "ckpt"), tmp_path / "ran"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ValueError, match="refused for safety: global .*system"):
        check_distributed_checkpoint(ckpt)
    assert not marker.exists()


def test_a_value_or_lightning_metadata_that_needs_unpickling_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'loops' needs arbitrary unpickling"):
        check_distributed_checkpoint(_directory(tmp_path / "a", loops=Payload()))
    ckpt = _directory(tmp_path / "b")
    torch.save({"epoch": 0, "callbacks": Payload()}, ckpt / "meta.pt")
    with pytest.raises(ValueError, match="meta.pt needs arbitrary unpickling"):
        check_distributed_checkpoint(ckpt)
    with pytest.raises(ValueError, match="not a distributed checkpoint directory"):
        check_distributed_checkpoint(tmp_path)


def _fit(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    annotations = write_fake_dataset(tmp_path / "images", num_images=8)
    cmd = [
        sys.executable, "-m", "lightning_blip", "fit",
        "-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"),
        "--trainer.devices=1", "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=1", "--trainer.strategy.tensor_parallel_size=1",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'run'}", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
        *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_cli_refuses_a_crafted_directory_before_lightning_reads_it(tmp_path):
    """Lightning's FSDP2 resume unpickles .metadata with pickle.load: without the check this runs the payload."""
    ckpt, marker = _directory(tmp_path / "ckpt"), tmp_path / "ran"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Exploit(marker)))
    result = _fit(tmp_path, "--trainer.max_steps=1", f"--ckpt_path={ckpt}")
    assert result.returncode != 0 and "refused for safety" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_the_cli_resumes_from_a_real_fsdp2_directory(tmp_path):
    first = _fit(tmp_path, "--trainer.max_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    assert last.is_dir()  # FSDP2: one shard per rank, optimiser state included
    check_distributed_checkpoint(last)
    resumed = _fit(tmp_path, "--trainer.max_steps=2", f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr + resumed.stdout
