"""``PredictionWriter``: what ``predict_step`` returns, written as JSONL (and embeddings as safetensors)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightning_blip.atomic import atomic_write_text, temporary_beside

# the dataset index first: it is what a distributed sampler repeats to pad the last share
log = logging.getLogger(__name__)

_PART = re.compile(r"\.rank\d+\.(jsonl|safetensors)$")
ID_KEYS = ("index", "text_index", "question_id", "image_id", "id")


def prediction_rows(prediction: dict[str, Any]) -> tuple[list[dict], dict[str, Tensor]]:
    """Split one batch's prediction into JSON rows and embedding tensors.

    ``prediction`` maps names to lists or tensors whose first dimension is the batch. Floating
    tensors with a feature dimension (``(B, D)``: embeddings) are returned apart; everything else
    becomes one JSON-ready dict per input (tensor rows as numbers or lists, e.g. a ranking ``(B, k)``).
    """
    embeddings = {k: v for k, v in prediction.items() if _is_embedding(v)}
    fields = {k: v for k, v in prediction.items() if k not in embeddings}
    sizes = {len(v) for v in fields.values()} | {len(v) for v in embeddings.values()}
    if len(sizes) > 1:
        raise ValueError(
            f"prediction fields have different batch sizes: { {k: len(v) for k, v in prediction.items()} }"
        )
    n = sizes.pop() if sizes else 0
    rows = [{k: _json_value(v[i]) for k, v in fields.items()} for i in range(n)]
    return rows, {k: v.detach().cpu() for k, v in embeddings.items()}


def _is_embedding(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.ndim >= 2


def _json_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _id_key(row: dict) -> str | None:
    """The first id key with a value (a null id identifies nothing: such rows are all kept)."""
    return next((k for k in ID_KEYS if row.get(k) is not None), None)


def prediction_streams(prediction: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{stream: fields}``: a prediction whose values are all dicts holds several streams (e.g.
    ``{"images": {...}, "texts": {...}}`` when their counts differ); any other is the stream
    ``"predictions"``."""
    if prediction and all(isinstance(v, dict) for v in prediction.values()):
        return prediction
    return {"predictions": prediction}


class PredictionWriter(BasePredictionWriter):
    """Write predictions to ``output_dir``: ``predictions.jsonl`` (one line per input id) and, when
    ``predict_step`` returns embeddings ``(B, D)``, ``predictions.safetensors``. Rank 0 prints the
    absolute path of every file written.

    A ``predict_step`` may return several streams as a dict of dicts (retrieval: ``images`` and
    ``texts``, whose counts differ): each gets its own ``<stream>.jsonl`` / ``<stream>.safetensors``.
    Each rank appends its lines to ``<stream>.rank<r>.jsonl`` batch by batch (flushed, so a
    crashed run keeps what it wrote). At the end rank 0 merges the parts (a shared file system is
    assumed), keeps the first line of each id (distributed samplers pad with repeats) and writes
    the result atomically (temporary file, then rename); a stream without a row writes no file. The
    id is the first of ``index``, ``text_index``, ``question_id``, ``image_id``, ``id`` a row has.
    Embeddings are saved in the order of the lines, with an ``ids`` tensor when the ids are integers.

    A previous prediction is never overwritten silently: if ``output_dir`` already holds a
    ``.jsonl`` or ``.safetensors`` file (other than per-rank parts), predict stops at its start,
    before any work, naming the file, unless ``overwrite`` is set.

    Args:
        output_dir: folder for the files; ``None``: ``predictions/`` in the run's folder (the
            trainer's ``log_dir``: the logger's version folder, or ``default_root_dir`` without one).
        keep_parts: keep the per-rank files after merging.
        overwrite: replace the files of a previous prediction in ``output_dir``.
    """

    def __init__(
        self, output_dir: str | None = None, keep_parts: bool = False, overwrite: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.configured_dir = output_dir
        self.output_dir = Path(output_dir or "predictions")
        self.keep_parts = keep_parts
        self.overwrite = overwrite
        self._embeddings: dict[str, dict[str, list[Tensor]]] = {}
        self._streams: set[str] = set()

    def _part(self, stream: str, rank: int, suffix: str) -> Path:
        return self.output_dir / f"{stream}.rank{rank}.{suffix}"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resolve ``output_dir``, refuse to overwrite a previous prediction, clear this rank's parts."""
        run_dir = trainer.log_dir  # a collective: every rank asks
        self.output_dir = Path(
            self.configured_dir or Path(run_dir or trainer.default_root_dir) / "predictions"
        )
        previous = trainer.strategy.broadcast(self.previous_predictions())  # every rank stops, or none
        if previous and not self.overwrite:
            raise FileExistsError(
                f"{previous[0]} holds a previous prediction: predict would overwrite it. Move it, choose "
                "another folder (PredictionWriter's output_dir), or set the writer's overwrite: true"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for old in self.output_dir.glob(f"*.rank{trainer.global_rank}.*"):
            old.unlink()
        self._embeddings, self._streams = {}, set()

    def previous_predictions(self) -> list[str]:
        """The ``.jsonl`` / ``.safetensors`` files in ``output_dir`` other than per-rank parts, sorted."""
        files = [*self.output_dir.glob("*.jsonl"), *self.output_dir.glob("*.safetensors")]
        return sorted(str(f.absolute()) for f in files if not _PART.search(f.name))

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for stream, fields in prediction_streams(prediction).items():
            rows, embeddings = prediction_rows(fields)
            self._streams.add(stream)
            with open(self._part(stream, trainer.global_rank, "jsonl"), "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
                f.flush()
            for key, value in embeddings.items():
                self._embeddings.setdefault(stream, {}).setdefault(key, []).append(value)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for stream, embeddings in self._embeddings.items():
            tensors = {k: torch.cat(v) for k, v in embeddings.items()}
            save_file(tensors, str(self._part(stream, trainer.global_rank, "safetensors")))
        streams = trainer.strategy.broadcast(sorted(self._streams))  # rank 0's; every rank runs every stream
        trainer.strategy.barrier("prediction_writer")
        if trainer.global_rank == 0:
            written = [path for stream in streams for path in self.merge(stream, trainer.world_size)]
            for path in written:
                print(f"predictions written to {path.absolute()}")
            if not written:
                log.warning(
                    "no prediction to write (no readable input): nothing written to %s", self.output_dir
                )
        trainer.strategy.barrier("prediction_writer_merged")

    def merge(self, stream: str, world_size: int) -> list[Path]:
        """Merge the per-rank parts of ``stream`` into ``<stream>.jsonl`` (and ``.safetensors``);
        returns the files written (none for a stream without rows)."""
        seen: set = set()
        lines, keep = [], []  # keep: for each line of the parts, whether it is the first of its id
        for rank in range(world_size):
            part = self._part(stream, rank, "jsonl")
            for line in part.read_text().splitlines() if part.is_file() else []:
                row = json.loads(line)
                key = _id_key(row)
                row_id = json.dumps(row[key]) if key else None
                first = row_id is None or row_id not in seen
                seen.add(row_id)
                keep.append(first)
                if first:
                    lines.append(line)
        out = self.output_dir / f"{stream}.jsonl"
        written = [out] if lines else []
        if lines:
            atomic_write_text(out, "".join(line + "\n" for line in lines))
        parts = [self._part(stream, r, "safetensors") for r in range(world_size)]
        if lines and any(p.is_file() for p in parts):
            merged = [load_file(str(p)) for p in parts if p.is_file()]
            tensors = {k: torch.cat([m[k] for m in merged])[torch.tensor(keep)] for k in merged[0]}
            ids = [row[_id_key(row)] if _id_key(row) else None for row in map(json.loads, lines)]
            if all(isinstance(i, int) for i in ids):
                tensors["ids"] = torch.tensor(ids)
            written.append(self.output_dir / f"{stream}.safetensors")
            with temporary_beside(written[-1]) as tmp:
                save_file(tensors, str(tmp))
        if not self.keep_parts:
            for part in (*parts, *(self._part(stream, r, "jsonl") for r in range(world_size))):
                part.unlink(missing_ok=True)
        return written
