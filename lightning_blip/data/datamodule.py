"""LightningDataModule for image-text pairs from LAVIS-style annotation files, with exact mid-epoch resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lightning_blip.checks import check_config
from lightning_blip.data.annotations import (
    Annotations,
    ImageTextRecord,
    OptionalFields,
    check_annotation_file,
    read_annotations,
)
from lightning_blip.data.collate import ImageTextCollator
from lightning_blip.data.dataset import ImageTextDataset
from lightning_blip.data.image_folder import folder_records
from lightning_blip.data.sampler import ResumableDataLoader, ResumableDistributedSampler
from lightning_blip.data.transforms import eval_transform, train_transform
from lightning_blip.models.shared.tokenizer import build_tokenizer

log = logging.getLogger(__name__)


def check_folder(field: str, path: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming ``field`` unless ``path`` is an existing folder."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{field} {path} is not a folder (--data.init_args.{field})")


def check_annotation_files(field: str, paths: str | list[str] | None) -> None:
    """Raise, naming ``field``, unless each of ``paths`` is a ``.json`` / ``.jsonl`` file."""
    for path in [paths] if isinstance(paths, str) else paths or []:
        try:
            check_annotation_file(Path(path))
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{field}: {err} (--data.init_args.{field})") from err


Paths = str | list[str] | None


class ImageTextDataModule(L.LightningDataModule):
    """Image-text pairs for pretraining and evaluation; batches as documented in ``ImageTextCollator``.

    Args:
        train_annotations: ``.json`` / ``.jsonl`` annotation file(s) for training.
        val_annotations: annotation file(s) for validation (optional during fit).
        test_annotations: annotation file(s) for testing.
        predict_annotations: annotation file(s) for ``predict``; ``None`` uses ``test_annotations``.
            Their records may lack the fields in :attr:`predict_optional` (e.g. the captions).
        predict_images: a folder to predict on instead: every image file under it, sorted, its path
            relative to the folder as ``image`` and ``image_id`` (DataModules that predict from images
            alone: captioning, retrieval).
        image_root: folder the annotations' image paths are relative to.
        image_size: side of the square images fed to the model, in pixels.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device; ``None`` uses ``batch_size``.
        num_workers: dataloader worker processes per device.
        max_words: captions are cut to this many words (``pre_caption``).
        max_length: captions are cut to this many tokens, [CLS] and [SEP] included.
        crop_scale: area range of the training RandomResizedCrop.
        randaugment: add BLIP's RandomAugment(2, 5) to the training transform.
        vocab: tokenizer ``vocab.txt`` (or a folder holding one); ``None`` uses the bundled
            bert-base-uncased vocabulary.
        seed: seed of the training order and of every sample's augmentation.
        pin_memory: pin batches in page-locked memory.

    The sizes and the predict inputs are checked at construction (naming the field); ``image_root``
    must be a folder at ``setup`` (recipes name placeholder paths until then).

    After ``setup``, ``num_skipped_records[split]`` counts the malformed records skipped and
    ``num_dropped_captions[split]`` the captions without a word dropped from records with others.

    Resume: ``state_dict()`` records the epoch of the next training batch and how many batches of that
    epoch are done (with the batch size and world size); after ``load_state_dict`` the next
    ``train_dataloader()`` starts at that point of the same permutation, with the same augmentations.
    """

    def __init__(
        self,
        train_annotations: Paths = None,
        val_annotations: Paths = None,
        test_annotations: Paths = None,
        predict_annotations: Paths = None,
        predict_images: str | None = None,
        image_root: str = ".",
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        max_words: int = 30,
        max_length: int = 30,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        randaugment: bool = False,
        vocab: str | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        check_config("image_size", image_size > 0, "a positive number of pixels", image_size)
        check_config("batch_size", batch_size >= 1, "at least 1", batch_size)
        check_config(
            "eval_batch_size", eval_batch_size is None or eval_batch_size >= 1, "at least 1", eval_batch_size
        )
        check_config("max_words", max_words >= 1, "at least 1", max_words)
        check_config(
            "crop_scale",
            len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1,
            "(min, max) area fractions with 0 < min <= max <= 1",
            crop_scale,
        )
        self.check_predict_inputs(predict_annotations, predict_images)
        self.annotations = {
            "train": train_annotations,
            "val": val_annotations,
            "test": test_annotations,
            "predict": predict_annotations or test_annotations,
        }
        self.predict_images = predict_images
        self.image_root = image_root
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_words = max_words
        self.crop_scale = crop_scale
        self.randaugment = randaugment
        self.seed = seed
        self.pin_memory = pin_memory
        self.tokenizer = build_tokenizer(vocab)
        self.collator = ImageTextCollator(self.tokenizer, max_length)
        self.datasets: dict[str, Dataset] = {}
        self.num_skipped_records: dict[str, int] = {}
        self.num_dropped_captions: dict[str, int] = {}
        self._resume: dict[str, int] | None = None

    predict_optional: OptionalFields = frozenset()
    """The fields a predict record may lack: none here (predict embeds image-caption pairs);
    captioning: ``{"caption"}``; retrieval: ``{"caption", "image"}``."""

    def check_predict_inputs(self, annotations: Paths, images: str | None) -> None:
        """Fail naming the field if ``predict_annotations`` / ``predict_images`` cannot be read."""
        check_config(
            "predict_images",
            not (annotations and images),
            "unset when predict_annotations is set (one input for predict)",
            images,
        )
        check_annotation_files("predict_annotations", annotations)
        if images is not None:
            check_config(
                "predict_images",
                "caption" in self.predict_optional,
                f"unset: {type(self).__name__} predicts from image-caption pairs, not images alone",
                images,
            )
            check_folder("predict_images", images)

    def split_image_root(self, split: str) -> str:
        """The folder a split's image paths are relative to: ``predict_images`` for a predict folder."""
        return self.predict_images if split == "predict" and self.predict_images else self.image_root

    def _read(self, split: str, required: bool) -> Annotations | None:
        """The split's records (predict: from the folder, or records that may lack fields); None if unset."""
        if split == "predict" and self.predict_images:
            records = folder_records(self.predict_images)
            if not records:
                raise ValueError(f"predict_images {self.predict_images}: no image file under it")
            return Annotations(records, 0, 0)
        paths = self.annotations[split]
        if not paths:  # None, or the recipes' [] left to fill in
            if required:
                hint = " (nor test_annotations, nor predict_images)" if split == "predict" else ""
                raise ValueError(
                    f"{split}_annotations is not set{hint} (--data.init_args.{split}_annotations)"
                )
            return None
        optional = self.predict_optional if split == "predict" else frozenset()
        return read_annotations(paths, optional)

    def _load(self, split: str, required: bool) -> None:
        loaded = self._read(split, required)
        if loaded is None:
            return
        skipped, dropped = loaded.skipped_records, loaded.dropped_captions
        if not loaded.records:
            paths = self.annotations[split]
            raise ValueError(f"{split}_annotations {paths}: no valid record ({skipped} malformed skipped)")
        if skipped:
            log.warning("%s annotations: skipped %d malformed records", split, skipped)
        if dropped:
            log.warning("%s annotations: dropped %d captions without a word", split, dropped)
        self.num_skipped_records[split] = skipped
        self.num_dropped_captions[split] = dropped
        self.datasets[split] = self.build_dataset(split, loaded.records)

    def build_dataset(self, split: str, records: list[ImageTextRecord]) -> Dataset:
        """The dataset of a split from its records (subclasses change the evaluation layout)."""
        transform = (
            train_transform(self.image_size, self.crop_scale, self.randaugment)
            if split == "train"
            else eval_transform(self.image_size)
        )
        return ImageTextDataset(
            records,
            self.split_image_root(split),
            transform,
            self.max_words,
            substitute_corrupt=split == "train",
        )

    def image_folders(self) -> dict[str, str]:
        """The image folders by argument name, which ``setup`` checks exist."""
        return {"image_root": self.image_root}

    def setup(self, stage: str) -> None:
        """Check the image folders; load the annotations the stage needs ("fit": train and, if given, val;
        "predict": ``predict_images``, or ``predict_annotations``, or else ``test_annotations``)."""
        for field, path in self.image_folders().items():
            check_folder(field, path)
        if stage == "fit":
            self._load("train", required=True)
            self._load("val", required=False)
        elif stage == "validate":
            self._load("val", required=True)
        elif stage == "test":
            self._load("test", required=True)
        elif stage == "predict":
            self._load("predict", required=True)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            raise RuntimeError(f"no {split} dataset: call setup() with {split}_annotations set")
        return self.datasets[split]

    def _start(self, epoch: int, world_size: int) -> tuple[int, int]:
        """``(epoch, samples of this rank's share to skip)`` for a new training loader.

        After ``load_state_dict`` (once): the saved position; otherwise the start of ``epoch``.
        """
        resume, self._resume = self._resume, None
        if resume is None:
            return epoch, 0
        if (resume["batch_size"], resume["world_size"]) != (self.batch_size, world_size):
            log.warning(
                "resuming with batch size %d on %d devices, saved with %d on %d: not an exact resume",
                self.batch_size,
                world_size,
                resume["batch_size"],
                resume["world_size"],
            )
        return resume["epoch"], resume["batches_done"] * self.batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled, drop-last batches of ``(index, seed)`` items; skips what a resumed epoch already did."""
        world_size, rank, epoch = 1, 0, 0
        if self.trainer is not None:
            world_size, rank = self.trainer.world_size, self.trainer.global_rank
            epoch = self.trainer.current_epoch
        dataset = self._dataset("train")
        sampler = ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        epoch, skip = self._start(epoch, world_size)
        # set here, not only by Lightning's set_epoch: workers prefetch from the sampler as soon as the
        # loader is iterated, which on resume happens before Lightning sets the epoch
        sampler.set_epoch(epoch)
        sampler.skip(skip)
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator,
            pin_memory=self.pin_memory,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def eval_collate_fn(self):
        """Batches validation/test/predict items (subclasses with another evaluation layout override it)."""
        return self.collator

    shard_evaluation: bool = True
    """Each rank evaluates its share of the items even with ``use_distributed_sampler: false``
    (which the recipes set for the resumable training sampler), rather than every rank the whole
    set. The evaluations gather their results and drop the repeats that pad the last share (by item
    index); a held-out LM loss over pairs counts those few repeats (fewer than the number of ranks)."""

    def eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Sampler of the evaluation loaders: with :attr:`shard_evaluation`, a ``DistributedSampler``
        (no shuffle) when distributed; otherwise None, and Lightning adds one unless the trainer has
        ``use_distributed_sampler=False``."""
        if not self.shard_evaluation or self.trainer is None or self.trainer.world_size == 1:
            return None
        return DistributedSampler(
            dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )

    def _eval_dataloader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=self.eval_sampler(dataset),
            num_workers=self.num_workers,
            collate_fn=self.eval_collate_fn(),
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in annotation order; an empty list (no validation) without val annotations."""
        return self._eval_dataloader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        """Test batches in annotation order."""
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """The predict records (see ``setup``), in order; ``lightning_blip predict`` writes the task's rows."""
        return self._eval_dataloader("predict")

    def state_dict(self) -> dict[str, Any]:
        """Where training stands: ``{"epoch", "batches_done", "batch_size", "world_size"}``.

        ``epoch`` is the epoch of the next training batch and ``batches_done`` its batches already
        trained; ``{}`` without a trainer.
        """
        if self.trainer is None:
            return {}
        batches = self.trainer.fit_loop.epoch_loop.batch_progress
        # "processed" counts a batch once its training step ran; "completed" only after its
        # on_train_batch_end hooks, where step-based checkpoints are saved (Lightning restores at processed)
        epoch, done = self.trainer.current_epoch, batches.current.processed
        if batches.is_last_batch:
            epoch, done = epoch + 1, 0
        return {
            "epoch": epoch,
            "batches_done": done,
            "batch_size": self.batch_size,
            "world_size": self.trainer.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where the saved run was; the next ``train_dataloader()`` continues from there."""
        self._resume = dict(state_dict) if state_dict else None


class EasyVQACaptionDataModule(ImageTextDataModule):
    """The offline easy-VQA image-text set ("a small red circle"), written on first use.

    ``prepare_data`` writes ``train.json`` / ``test.json`` into ``output_dir`` from the ``easy-vqa``
    package; its images are read in place. The test split serves as validation and test set.

    Args:
        output_dir: where the annotation files are written.
        with_size: add "small"/"large" from the shape's area.
        **kwargs: the other :class:`ImageTextDataModule` arguments.
    """

    def __init__(self, output_dir: str = "outputs/easy_vqa", with_size: bool = True, **kwargs: Any) -> None:
        from lightning_blip.data.easy_vqa import easy_vqa_image_root

        out = Path(output_dir)
        super().__init__(
            train_annotations=str(out / "train.json"),
            val_annotations=str(out / "test.json"),
            test_annotations=str(out / "test.json"),
            image_root=str(easy_vqa_image_root()),
            **kwargs,
        )
        self.output_dir, self.with_size = out, with_size

    def prepare_data(self) -> None:
        from lightning_blip.data.easy_vqa import write_easy_vqa_captions

        if not (self.output_dir / "train.json").is_file() or not (self.output_dir / "test.json").is_file():
            write_easy_vqa_captions(self.output_dir, self.with_size)
