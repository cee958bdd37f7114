"""The work of a CapFilt run: input sources cut into numbered chunks of records, read on demand.

A chunk is up to ``shard_size`` consecutive records of one annotation file; chunk ``c`` becomes the
output shard ``part-<c>.jsonl``. The numbering depends only on the sources (in config order, glob
patterns sorted) and ``shard_size``, so a restarted run finds the same chunks and skips those whose
shard exists.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_blip.data.annotations import ImageTextRecord, load_annotations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One named input source.

    Attributes:
        name: the name its statistics are reported under.
        annotations: ``.json`` / ``.jsonl`` annotation files; glob patterns (``cc3m/*.jsonl``) are
            expanded and sorted.
        human_annotated: its texts pass through unfiltered and get no synthetic captions (COCO, VG).
    """

    name: str
    annotations: list[str]
    human_annotated: bool = False


@dataclass(frozen=True)
class Chunk:
    """Records ``start..stop-1`` of the plan, all from one file of ``source``."""

    id: int
    source: str
    human_annotated: bool
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-{self.id:06d}"

    def __len__(self) -> int:
        return self.stop - self.start


class RecordStore(Sequence[ImageTextRecord]):
    """The records of the plan's files, read one file at a time when asked for (streaming).

    Record ``i`` is record ``i - offsets[k]`` of ``files[k]``, where ``offsets[k] <= i <
    offsets[k + 1]``. Only the last file read is held, so memory follows one input shard, not the
    data set; chunks are read in order, so each file is read about once per reader.
    """

    def __init__(self, files: list[str], offsets: list[int]) -> None:
        self.files, self.offsets = files, offsets
        self._held: tuple[int, list[ImageTextRecord]] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        k = bisect.bisect_right(self.offsets, index) - 1
        if self._held is None or self._held[0] != k:
            quiet = logging.getLogger("lightning_blip.data.annotations")
            level, quiet.level = quiet.level, logging.ERROR  # malformed records were reported by make_plan
            try:
                self._held = (k, load_annotations(self.files[k])[0])
            finally:
                quiet.setLevel(level)
        return self._held[1][index - self.offsets[k]]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_held": None}  # workers read their own files


@dataclass
class Plan:
    """The records (read on demand), their chunks, and per source the malformed records and
    unreadable files skipped."""

    records: RecordStore
    chunks: list[Chunk]
    skipped: dict[str, dict[str, int]]


def _expand(pattern: str) -> list[str]:
    if not glob.has_magic(pattern):
        return [pattern]
    found = sorted(glob.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no annotation file matches {pattern}")
    return found


def input_files(sources: list[Source]) -> dict[str, list[list]]:
    """Per source, the files its patterns match now, with their sizes in bytes: a restart must see the
    same, or its chunks would hold other records than the shards already written."""
    return {
        source.name: [
            [path, os.path.getsize(path) if os.path.isfile(path) else -1]  # lists: as JSON reads back
            for pattern in source.annotations
            for path in _expand(pattern)
        ]
        for source in sources
    }


def make_plan(sources: list[Source], shard_size: int) -> Plan:
    """Read every source's files and cut each file's records into chunks of ``shard_size``.

    A malformed record is skipped and counted (``malformed_records``); a file that is not JSON at
    all is skipped with a warning and counted (``unreadable_files``). A missing file raises
    ``FileNotFoundError``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    files: list[str] = []
    offsets = [0]
    chunks: list[Chunk] = []
    skipped = {s.name: {"malformed_records": 0, "unreadable_files": 0} for s in sources}
    for source in sources:
        for path in (p for pattern in source.annotations for p in _expand(pattern)):
            try:
                file_records, malformed = load_annotations(path)
            except (TypeError, ValueError) as err:
                if not Path(path).is_file():
                    raise
                log.warning("skipping unreadable annotation file %s: %s", path, err)
                skipped[source.name]["unreadable_files"] += 1
                continue
            skipped[source.name]["malformed_records"] += malformed
            for start in range(0, len(file_records), shard_size):
                offset = offsets[-1] + start
                size = min(shard_size, len(file_records) - start)
                chunks.append(Chunk(len(chunks), source.name, source.human_annotated, offset, offset + size))
            files.append(path)
            offsets.append(offsets[-1] + len(file_records))  # the file's records are let go here
    return Plan(RecordStore(files, offsets), chunks, skipped)
