"""Prediction on a plain folder of images: one record per image file under it, without captions."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lightning_blip.data.annotations import ImageTextRecord


def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of the formats PIL can open (``.jpg``, ``.png``, ``.webp``, ...)."""
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def folder_records(folder: str | Path) -> list[ImageTextRecord]:
    """One caption-less record per image file under ``folder`` (sub-folders included), sorted by its
    path relative to ``folder``, which is both its ``image`` and its ``image_id``.

    Files are chosen by suffix; one that does not decode is skipped when read, as elsewhere.
    """
    root, suffixes = Path(folder), image_suffixes()
    paths = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes and path.is_file()
    )
    return [ImageTextRecord(image=path, captions=(), image_id=path) for path in paths]
