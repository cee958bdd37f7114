"""CapFilt's input pipeline: the pending web chunks of a plan, in batches that never span two chunks.

Each rank takes every ``world_size``-th pending chunk, so no record is processed twice and no
padding is needed; a batch is the same whatever the number of ranks, which makes its sampling seed
(chunk id, batch number within the chunk) and therefore the output independent of the devices.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from lightning_blip.capfilt.plan import Chunk, Plan
from lightning_blip.capfilt.writer import is_done
from lightning_blip.data.annotations import ImageTextRecord
from lightning_blip.data.dataset import SkippingImageDataset
from lightning_blip.data.transforms import eval_transform


class CapFiltDataset(SkippingImageDataset):
    """``{"index", "image": (3, H, W) or None if unreadable (warned, counted), "captions": tuple}``."""

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        image_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        super().__init__(image_root, transform)
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:
        image = self._read_image(self.records[index].image, index, seed)
        return None if image is None else {"image": image}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        return {
            "index": index,
            "image": None if item is None else item["image"],
            "captions": self.records[index].captions,
        }


class ChunkBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` consecutive record indices of this rank's chunks (the last of a chunk shorter)."""

    def __init__(self, chunks: Sequence[Chunk], batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.chunks = list(chunks)[rank::world_size]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.chunks:
            for start in range(chunk.start, chunk.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, chunk.stop)))

    def __len__(self) -> int:
        return sum(-(-len(chunk) // self.batch_size) for chunk in self.chunks)


class CapFiltCollator:
    """Items of one chunk -> ``{"image": (B, 3, H, W), "index": [B], "captions": [B tuples],
    "corrupt": [indices of unreadable images], "chunk": id, "batch": number within the chunk}``."""

    def __init__(self, chunks: Sequence[Chunk], batch_size: int) -> None:
        self.starts = [c.start for c in chunks]
        self.ids = [c.id for c in chunks]
        self.batch_size = batch_size

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        first = items[0]["index"]
        position = bisect.bisect_right(self.starts, first) - 1
        kept = [item for item in items if item["image"] is not None]
        return {
            "image": torch.stack([item["image"] for item in kept]) if kept else torch.zeros(0, 3, 0, 0),
            "index": [item["index"] for item in kept],
            "captions": [item["captions"] for item in kept],
            "corrupt": [item["index"] for item in items if item["image"] is None],
            "chunk": self.ids[position],
            "batch": (first - self.starts[position]) // self.batch_size,
        }


class CapFiltDataModule(L.LightningDataModule):
    """The web chunks of ``plan`` whose shard is not in ``output_dir`` yet (rank 0 decides for all ranks).

    Args:
        plan: records and chunks.
        output_dir: where finished shards are.
        image_root: folder the records' image paths are relative to.
        image_size: images are resized to this square (evaluation transform).
        batch_size: images per batch (a chunk's last batch may be smaller).
        num_workers: dataloader worker processes.
    """

    def __init__(
        self,
        plan: Plan,
        output_dir: str | Path,
        image_root: str | Path,
        image_size: int = 384,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.plan, self.output_dir = plan, Path(output_dir)
        self.dataset = CapFiltDataset(plan.records, image_root, eval_transform(image_size))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pending: list[int] = []

    def setup(self, stage: str) -> None:
        pending = [
            c.id for c in self.plan.chunks if not c.human_annotated and not is_done(self.output_dir, c)
        ]
        self.pending = self.trainer.strategy.broadcast(pending)  # rank 0's view: ranks may start apart

    def predict_dataloader(self) -> DataLoader:
        chunks = [self.plan.chunks[i] for i in self.pending]
        sampler = ChunkBatchSampler(
            chunks, self.batch_size, self.trainer.global_rank, self.trainer.world_size
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=CapFiltCollator(self.plan.chunks, self.batch_size),
            num_workers=self.num_workers,
        )
