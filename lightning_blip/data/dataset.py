"""A map-style dataset of (image, caption) pairs with per-sample augmentation seeds."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_blip.data.annotations import ImageTextRecord, expand_captions
from lightning_blip.data.text import pre_caption
from lightning_blip.data.warn_once import WarnOnce

log = logging.getLogger(__name__)

# what PIL raises opening or decoding a missing, unidentified, corrupt, truncated or oversized file;
# only these, and only there, skip an image: errors of the transform (config errors) propagate
UNREADABLE_IMAGE_ERRORS = (OSError, Image.DecompressionBombError, ValueError, SyntaxError)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and python's ``random`` for the block, restoring both afterwards.

    Accelerator generators are left alone (``torch.manual_seed`` would reseed them for good).
    """
    python_state = random.getstate()
    # devices=[]: forking CUDA generators would initialise CUDA inside dataloader workers
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class SkippingImageDataset(Dataset):
    """Base of the image datasets: unreadable images are skipped with a warning (once per file and run,
    across epochs and DataLoader workers) and counted.

    Subclasses implement ``__len__`` and ``_load(index, seed)``, which reads its image through
    :meth:`_read_image` and returns ``None`` when that fails. Only a file that cannot be opened or
    decoded is skipped; an error of the transform (a config error) propagates.

    Args:
        image_root: folder the records' image paths are relative to; a missing folder is an error
            at the first read, not a skip.
        transform: PIL image -> ``(3, H, W)`` tensor.
        substitute_corrupt: replace an unreadable item by a random readable one (training) instead
            of returning ``None`` (evaluation, where the collator drops it).
        max_substitutions: the distinct random items tried when an item is unreadable before giving up
            with an error naming ``image_root`` (so many unreadable in a row means most images cannot
            be read: a config error). Training tries them as substitutes. Evaluation, so that a split
            with no readable image does not pass as an empty one, tries them (without warnings) only
            until this process has read one image; then unreadable items are just ``None``.
    """

    def __init__(
        self,
        image_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
        substitute_corrupt: bool = False,
        max_substitutions: int = 16,
    ) -> None:
        self.image_root = Path(image_root)
        self.transform = transform
        self.substitute_corrupt = substitute_corrupt
        self.max_substitutions = max_substitutions
        self.num_skipped = 0  # failed reads in this process; the collator reports skips per batch
        self._read_one = False  # an image was read in this process: evaluation stops checking for none
        self._quiet = False  # reads that only check for a readable image: failures not warned or counted
        self._warned = WarnOnce()  # each unreadable file warned once per run, not once per epoch or worker

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        """``key`` is an index or ``(index, seed)``; with a seed the augmentation depends on nothing else.

        Returns the subclass's item plus ``"num_skipped"``: 1 if the item's own image could not be
        read and another item took its place, else 0, so that an epoch counts each unreadable sample
        once. When the image cannot be read it is skipped with a warning: with ``substitute_corrupt``
        a random readable item takes its place (so every rank keeps the same batch size, which gathers
        across ranks need), else the result is ``None``.
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        item = self._load(index, seed)
        if item is not None:
            self._read_one = True
            item["num_skipped"] = 0
            return item
        if not self.substitute_corrupt and self._read_one:
            return None
        others = self._others(index, seed)
        substitute = self._first_readable(others, seed)
        if substitute is None:
            raise RuntimeError(
                f"item {index} and {len(others)} random others could not be read: most (or all) images "
                f"under image_root={self.image_root} seem unreadable (the warnings above say why)"
            )
        if not self.substitute_corrupt:
            return None
        substitute["num_skipped"] = 1
        return substitute

    def _first_readable(self, indices: list[int], seed: int | None) -> dict[str, Any] | None:
        """The item of the first of ``indices`` whose image is readable, or ``None``.

        Evaluation only checks that some image is readable: its failed reads are not warned or counted.
        """
        self._quiet = not self.substitute_corrupt
        try:
            for index in indices:
                item = self._load(index, seed)
                if item is not None:
                    self._read_one = True
                    return item
            return None
        finally:
            self._quiet = False

    def _others(self, index: int, seed: int | None) -> list[int]:
        """Up to ``max_substitutions`` distinct items other than ``index``, drawn from (index, seed) only.

        Random, not neighbouring: unreadable files often come in runs (a missing folder); a resumed
        run makes the same choices.
        """
        draws = random.Random(index * 1_000_003 + (seed or 0))
        picked = draws.sample(range(len(self) - 1), min(self.max_substitutions, len(self) - 1))
        return [other + (other >= index) for other in picked]

    def _read_image(self, relpath: str | Path, index: int, seed: int | None) -> torch.Tensor | None:
        """The transformed image at ``image_root / relpath``, or ``None`` (warned, counted) if the file
        cannot be opened or decoded; errors of the transform propagate."""
        path = self.image_root / relpath
        with ExitStack() as stack:
            try:
                file = stack.enter_context(Image.open(path))
                file.load()
            except UNREADABLE_IMAGE_ERRORS as err:
                if not self.image_root.is_dir():
                    raise FileNotFoundError(f"image_root {self.image_root} is not a folder") from err
                if not self._quiet:
                    self.num_skipped += 1
                    self._warned.warn(
                        log,
                        str(path),
                        "skipping image %s (item %d): %s: %s (warned once per run; every skip is counted)",
                        path,
                        index,
                        type(err).__name__,
                        err,
                    )
                return None
            if seed is None:
                return self.transform(file)
            with seeded_rng(seed):
                return self.transform(file)


class ImageTextDataset(SkippingImageDataset):
    """One item per (record, caption) pair.

    Args:
        records: annotation records.
        image_root: folder the records' image paths are relative to.
        transform: PIL image -> ``(3, H, W)`` tensor.
        max_words: ``pre_caption`` word limit.
        substitute_corrupt, max_substitutions: see :class:`SkippingImageDataset`.

    ``image_ids[i]`` is a dense id in ``0..K-1`` shared by all items of one ``image_id``, so that
    contrastive losses can treat pairs of the same image as positives.
    """

    def __init__(
        self,
        records: Sequence[ImageTextRecord],
        image_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
        max_words: int = 30,
        substitute_corrupt: bool = False,
        max_substitutions: int = 16,
    ) -> None:
        super().__init__(image_root, transform, substitute_corrupt, max_substitutions)
        self.records = list(records)
        self.max_words = max_words
        self.pairs = expand_captions(self.records)
        dense: dict[str, int] = {}
        record_ids = [dense.setdefault(record.image_id, len(dense)) for record in self.records]
        self.image_ids = [record_ids[r] for r, _ in self.pairs]
        self.num_images = len(dense)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:
        """``{"image": (3, H, W), "caption": str, "image_id": int, "index": int}`` or ``None``."""
        record_index, caption_index = self.pairs[index]
        record = self.records[record_index]
        image = self._read_image(record.image, index, seed)
        if image is None:
            return None
        return {
            "image": image,
            "caption": pre_caption(record.captions[caption_index], self.max_words),
            "image_id": self.image_ids[index],
            "index": index,
        }
