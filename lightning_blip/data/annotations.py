"""LAVIS-style image-text annotations: ``.json`` (a list of records) or ``.jsonl`` (one record a line).

A record is ``{"image": relpath, "caption": str | [str], "image_id": scalar (optional)}``; other keys
are ignored. Prediction reads records that may lack the caption (or, for retrieval, the image). Malformed records are skipped with one warning line each and counted, never raised; a
caption without a word is dropped from a record that has others, counted, with one warning per file.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ImageTextRecord:
    """One image with its captions; ``image`` is relative to an image root (``None``: a text-only
    prediction record; ``captions`` is empty in an image-only one)."""

    image: str | None
    captions: tuple[str, ...]
    image_id: str


@dataclass
class Annotations:
    """What :func:`read_annotations` read: the records, the malformed records skipped, and the captions
    without a word dropped from records that kept another (a record with none left is a skipped one)."""

    records: list[ImageTextRecord]
    skipped_records: int
    dropped_captions: int


OptionalFields = frozenset[str]
"""The fields a record may lack: none (training, evaluation), ``{"caption"}`` (predicting captions)
or ``{"caption", "image"}`` (retrieval's prediction embeds whichever a record has)."""


def parse_record(raw: Any, optional: OptionalFields = frozenset()) -> ImageTextRecord:
    """Validate one raw record; raises ``TypeError`` or ``ValueError`` saying what is wrong.

    Captions without a word are dropped (:func:`read_annotations` counts them). The fields in
    ``optional`` may be missing (null), but a record needs an image or a caption.
    """
    return _parse_record(raw, optional)[0]


def _parse_record(raw: Any, optional: OptionalFields = frozenset()) -> tuple[ImageTextRecord, int]:
    """:func:`parse_record`'s record and how many of its captions were dropped for having no word."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, got {type(raw).__name__}")
    image, caption = raw.get("image"), raw.get("caption")
    if image is None and caption is None and optional:
        raise ValueError("neither 'image' nor 'caption'")
    if not (image is None and "image" in optional) and (not isinstance(image, str) or not image):
        raise ValueError("missing or empty 'image'")
    if caption is None and "caption" in optional:
        caption, captions = [], ()
    else:
        if isinstance(caption, str):
            caption = [caption]
        if not (isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption)):
            raise ValueError("'caption' must be a string or a non-empty list of strings")
        captions = tuple(c for c in caption if any(ch.isalnum() for ch in c))  # no word: nothing to learn
        if not captions:
            raise ValueError("'caption' has no word")
    image_id = raw.get("image_id")
    if image_id is None:
        image_id = image or ""
    elif isinstance(image_id, (dict, list)):
        raise ValueError("'image_id' must be a scalar")
    record = ImageTextRecord(image=image, captions=captions, image_id=str(image_id))
    return record, len(caption) - len(captions)


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, raw record)`` per non-blank line; a line that is not JSON gives a ``ValueError``."""
    decoded = failed = 0
    with path.open("rb") as f:  # decoded line by line: a line that is not UTF-8 is one malformed record
        for number, data in enumerate(f, start=1):
            if number == 1 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            if not data.strip():
                continue
            try:
                raw = json.loads(data.decode("utf-8"))
                decoded += 1
            except UnicodeDecodeError as err:
                raw, failed = ValueError(f"not UTF-8 ({err.reason} at byte {err.start})"), failed + 1
            except (ValueError, RecursionError) as err:  # JSONDecodeError, too deep, too large a number
                raw, failed = ValueError(f"invalid JSON ({getattr(err, 'msg', err)})"), failed + 1
            yield f"line {number}", raw
    if failed and not decoded:
        raise ValueError(f"{path}: no line is valid JSON")


def read_json(path: Path) -> Any:
    """The content of a ``.json`` file; a ``ValueError`` naming the file if it is not valid JSON."""
    try:
        with path.open(encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is not content
            return json.load(f)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _json_list(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, raw record)`` for each element of the file's top-level list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise TypeError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, raw in enumerate(data):
        yield f"record {index}", raw


def check_annotation_file(path: Path) -> None:
    """Raise ``FileNotFoundError`` if ``path`` is missing, ``ValueError`` unless it ends in .json/.jsonl."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: annotation files must end in .json or .jsonl")


def parse_records(
    path: Path, items: Iterable[tuple[str, Any]], parse: Callable[[Any], T]
) -> tuple[list[T], int]:
    """``parse`` each ``(location, raw)`` item; a malformed one (``TypeError``/``ValueError``, or a
    ``ValueError`` in place of the record) is skipped with one warning line and counted."""
    records: list[T] = []
    skipped = 0
    for location, raw in items:
        try:
            if isinstance(raw, ValueError):
                raise raw
            records.append(parse(raw))
        except (TypeError, ValueError) as err:
            skipped += 1
            log.warning("%s, %s: skipping malformed record: %s", path, location, err)
    return records, skipped


def read_annotations(
    paths: str | Path | Sequence[str | Path], optional: OptionalFields = frozenset()
) -> Annotations:
    """Read one or more annotation files: the records, and the malformed records and wordless captions
    left out (each file warns once with the number of captions it dropped). ``optional``: the fields
    a record may lack (:func:`parse_record`).

    Raises, naming the file: ``FileNotFoundError`` if it is missing, ``ValueError`` if it is not JSON
    (``.jsonl``: no line is) or its name ends in neither ``.json`` nor ``.jsonl``, ``TypeError`` if a
    ``.json`` file holds something other than a list.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    loaded = Annotations([], 0, 0)
    for path in map(Path, paths):
        check_annotation_file(path)
        items = json_lines(path) if path.suffix == ".jsonl" else _json_list(path)
        parsed, bad = parse_records(path, items, lambda raw: _parse_record(raw, optional))
        dropped = sum(drops for _, drops in parsed)
        if dropped:
            log.warning(
                "%s: dropped %d captions without a word from records with other captions", path, dropped
            )
        loaded.records += [record for record, _ in parsed]
        loaded.skipped_records += bad
        loaded.dropped_captions += dropped
    return loaded


def load_annotations(
    paths: str | Path | Sequence[str | Path],
) -> tuple[list[ImageTextRecord], int]:
    """:func:`read_annotations`' records and how many malformed ones were skipped."""
    loaded = read_annotations(paths)
    return loaded.records, loaded.skipped_records


def expand_captions(records: Sequence[ImageTextRecord]) -> list[tuple[int, int]]:
    """One ``(record index, caption index)`` pair per caption: each caption is its own training pair."""
    return [(r, c) for r, record in enumerate(records) for c in range(len(record.captions))]


def group_by_image(records: Sequence[ImageTextRecord]) -> list[ImageTextRecord]:
    """One record per image path, with the captions of every record of that image (first seen order).

    Evaluation scores one generated caption per image against all its references, whether the file
    holds one record per image (BLIP's val/test files) or one per caption (its train file's layout).
    """
    grouped: dict[str, ImageTextRecord] = {}
    for record in records:
        first = grouped.get(record.image)
        grouped[record.image] = (
            record if first is None else replace(first, captions=first.captions + record.captions)
        )
    return list(grouped.values())
