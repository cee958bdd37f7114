"""``lightning_blip consolidate CHECKPOINT_DIR OUTPUT.ckpt``: a sharded (FSDP2) checkpoint as one file
(:func:`~lightning_blip.weights.distributed.consolidate`)."""

from __future__ import annotations

import argparse

from lightning_blip.weights.distributed import consolidate


def main(argv: list[str] | None = None) -> None:
    """``lightning_blip consolidate CHECKPOINT_DIR OUTPUT.ckpt``."""
    parser = argparse.ArgumentParser(
        prog="lightning_blip consolidate", description=consolidate.__doc__.split("\n")[0]
    )
    parser.add_argument("checkpoint_dir", help="a distributed checkpoint directory (ModelParallelStrategy)")
    parser.add_argument("output", help="the single checkpoint file to write")
    args = parser.parse_args(argv)
    print(consolidate(args.checkpoint_dir, args.output))
