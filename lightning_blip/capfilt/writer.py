"""CapFilt's output: one JSONL shard per chunk, written atomically, with its statistics beside it.

``part-<c>.stats.json`` is written first, then ``part-<c>.jsonl`` (temporary name, then rename): a
shard that exists is complete and its statistics are there. ``stats.json`` sums them per source at
the end, and ``data.yaml`` lists the shards for ``lightning_blip fit -c``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_blip.atomic import atomic_write_text
from lightning_blip.capfilt.plan import Chunk, Plan

COUNTS = (
    "images_in",
    "texts_in",
    "web_kept",
    "synthetic_generated",
    "synthetic_kept",
    "human_kept",
    "images_no_text_left",
    "corrupt_images",
)
"""Per-chunk counts; ``texts_in`` are the source's own texts (web or human)."""


def shard_path(output_dir: Path, chunk: Chunk) -> Path:
    return output_dir / f"{chunk.name}.jsonl"


def stats_path(output_dir: Path, chunk: Chunk) -> Path:
    return output_dir / f"{chunk.name}.stats.json"


def is_done(output_dir: Path, chunk: Chunk) -> bool:
    return shard_path(output_dir, chunk).is_file()


def write_shard(output_dir: Path, chunk: Chunk, rows: Sequence[dict], counts: dict[str, int]) -> Path:
    """Write a chunk's statistics, then its annotation rows, each atomically."""
    stats = {"source": chunk.source, **counts}
    atomic_write_text(stats_path(output_dir, chunk), json.dumps(stats, indent=1) + "\n")
    path = shard_path(output_dir, chunk)
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def output_row(record, texts: Sequence[str], origins: Sequence[str]) -> dict[str, Any]:
    """An annotation record ``{"image", "caption": [...], "image_id", "caption_origin": [...]}``."""
    return {
        "image": record.image,
        "caption": list(texts),
        "image_id": record.image_id,
        "caption_origin": list(origins),
    }


def write_human_chunk(output_dir: Path, plan: Plan, chunk: Chunk) -> Path:
    """Copy a human-annotated chunk unfiltered."""
    records = plan.records[chunk.start : chunk.stop]
    rows = [output_row(r, r.captions, ["human"] * len(r.captions)) for r in records]
    texts = sum(len(r.captions) for r in records)
    counts = dict.fromkeys(COUNTS, 0) | {"images_in": len(records), "texts_in": texts, "human_kept": texts}
    return write_shard(output_dir, chunk, rows, counts)


def judged_chunk(plan: Plan, chunk: Chunk, judged: dict[int, dict]) -> tuple[list[dict], dict[str, int]]:
    """Output rows and counts of a web chunk from each record's texts and decisions.

    ``judged[index]`` is ``{"texts": [...], "num_web": int, "keep": [bool]}`` (web texts first), or
    ``None`` for a record whose image could not be read.
    """
    counts = dict.fromkeys(COUNTS, 0)
    rows = []
    for index in range(chunk.start, chunk.stop):
        record, result = plan.records[index], judged[index]
        counts["images_in"] += 1
        counts["texts_in"] += len(record.captions)
        if result is None:
            counts["corrupt_images"] += 1
            continue
        origins = ["web"] * result["num_web"] + ["synthetic"] * (len(result["texts"]) - result["num_web"])
        kept = [(t, o) for t, o, k in zip(result["texts"], origins, result["keep"]) if k]
        counts["synthetic_generated"] += len(origins) - result["num_web"]
        counts["web_kept"] += sum(o == "web" for _, o in kept)
        counts["synthetic_kept"] += sum(o == "synthetic" for _, o in kept)
        if not kept:
            counts["images_no_text_left"] += 1
            continue
        rows.append(output_row(record, *zip(*kept)))
    return rows, counts


class CapFiltWriter(BasePredictionWriter):
    """Collect each batch's decisions per chunk; write a chunk's shard as soon as all its records are in.

    Batches never span chunks and a chunk is processed by one rank only, so no rank waits for
    another and no record is written twice.
    """

    def __init__(self, output_dir: str | Path, plan: Plan) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.plan = plan
        self._pending: dict[int, dict[int, dict | None]] = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        chunk = self.plan.chunks[prediction["chunk"]]
        judged = self._pending.setdefault(chunk.id, {})
        judged.update(dict.fromkeys(prediction["corrupt"]))
        judged.update(zip(prediction["index"], prediction["results"]))
        if len(judged) == len(chunk):
            write_shard(self.output_dir, chunk, *judged_chunk(self.plan, chunk, self._pending.pop(chunk.id)))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = {}


def write_summary(output_dir: Path, plan: Plan, image_root: str) -> dict[str, Any]:
    """Sum the shards' statistics per source into ``stats.json``; list the shards in ``data.yaml``.

    Returns the statistics: ``{"sources": {name: counts}, "total": counts, "shards": [names]}``, the
    counts including the malformed records and unreadable files skipped when reading the sources.
    """
    sources: dict[str, dict[str, int]] = {}
    for name, skipped in plan.skipped.items():
        sources[name] = dict.fromkeys(COUNTS, 0) | skipped
    for chunk in plan.chunks:
        stats = json.loads(stats_path(output_dir, chunk).read_text())
        for key in COUNTS:
            sources[chunk.source][key] += stats[key]
    total = {key: sum(s[key] for s in sources.values()) for key in next(iter(sources.values()), {})}
    shards = [shard_path(output_dir, c).name for c in plan.chunks]
    summary = {"sources": sources, "total": total, "shards": shards}
    atomic_write_text(output_dir / "stats.json", json.dumps(summary, indent=1) + "\n")
    data = {
        "data": {
            "init_args": {
                "train_annotations": [str(output_dir / s) for s in shards],
                "image_root": image_root,
            }
        }
    }
    atomic_write_text(output_dir / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return summary
