"""Consolidating an FSDP2 distributed checkpoint (a directory of shards) into one checkpoint file."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

METADATA_FILE = "meta.pt"  # what Lightning's ModelParallelStrategy writes beside the shards


def consolidate(checkpoint_dir: str | Path, output: str | Path) -> Path:
    """Merge the shards of ``checkpoint_dir`` and Lightning's metadata into one ``.ckpt`` file.

    The result loads with ``Module.load_from_checkpoint(output, weights_only=True)`` (or
    ``torch.load``). Weights only: the sharded optimiser state is not carried over (resume from
    the directory itself to continue training). Frozen weights that the module names in the
    checkpoint's ``frozen_weights`` are left out, as in single-file checkpoints. Written atomically.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source, output = Path(checkpoint_dir), Path(output)
    if not (source / ".metadata").is_file():
        raise ValueError(f"{source} is not a distributed checkpoint directory (no .metadata file)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(source, merged)
        state_dict = torch.load(merged, weights_only=True)["state_dict"]
    checkpoint = (
        torch.load(source / METADATA_FILE, weights_only=True) if (source / METADATA_FILE).is_file() else {}
    )
    frozen = tuple(checkpoint.get("frozen_weights", {}).get("prefixes", ()))
    checkpoint["state_dict"] = {k: v for k, v in state_dict.items() if not (frozen and k.startswith(frozen))}
    partial = output.with_name(output.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, output)
    return output


def main(argv: list[str] | None = None) -> None:
    """``lightning_blip consolidate CHECKPOINT_DIR OUTPUT.ckpt``."""
    parser = argparse.ArgumentParser(
        prog="lightning_blip consolidate", description=consolidate.__doc__.split("\n")[0]
    )
    parser.add_argument("checkpoint_dir", help="a distributed checkpoint directory (ModelParallelStrategy)")
    parser.add_argument("output", help="the single checkpoint file to write")
    args = parser.parse_args(argv)
    print(consolidate(args.checkpoint_dir, args.output))
