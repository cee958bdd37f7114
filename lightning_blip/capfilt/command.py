"""``lightning_blip capfilt -c recipes/capfilt.yaml``: bootstrap a data set with a captioner and a filter.

Reads the sources (annotation files), captions every web image, keeps the texts the filter accepts,
and writes the new data set as JSONL shards in the same annotation format, ready for
``lightning_blip fit -c <recipe> -c <output_dir>/data.yaml``. Run it again with the same command
after a crash: finished shards are skipped and the result equals an uninterrupted run's.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_blip.callbacks.prediction_writer import atomic_write_text
from lightning_blip.capfilt.data import CapFiltDataModule
from lightning_blip.capfilt.filtering import CaptionSettings, FilterSettings
from lightning_blip.capfilt.plan import Source, input_files, make_plan
from lightning_blip.capfilt.progress import ImagesPerSecondBar
from lightning_blip.capfilt.task import CapFiltTask
from lightning_blip.capfilt.writer import CapFiltWriter, is_done, write_human_chunk, write_summary
from lightning_blip.checks import check_config
from lightning_blip.models.blip import BlipModel

SETTINGS_FILE = "capfilt.json"
"""The settings that decide the output; a restart into the same folder must repeat them."""
DEFAULT_CAPTIONING, DEFAULT_FILTERING = CaptionSettings(), FilterSettings()  # frozen: safe as defaults


def check_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``output_dir`` on the first run; raise ``ValueError`` if a restart differs."""
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"{output_dir} holds a run with other settings ({', '.join(changed)}): use another output_dir"
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def capfilt(
    captioner: str,
    filter: str,
    sources: list[Source],
    image_root: str,
    output_dir: str = "outputs/capfilt",
    image_size: int = 384,
    captioning: CaptionSettings = DEFAULT_CAPTIONING,
    filtering: FilterSettings = DEFAULT_FILTERING,
    shard_size: int = 10000,
    batch_size: int = 32,
    num_workers: int = 4,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run CapFilt; returns the statistics (also in ``<output_dir>/stats.json``) on rank 0, else None.

    Args:
        captioner: checkpoint of the captioner (any format ``BlipModel.from_pretrained`` reads).
        filter: checkpoint of the filter (ITM head).
        sources: the inputs; human-annotated ones pass through unfiltered.
        image_root: folder the records' image paths are relative to.
        output_dir: where the shards, ``stats.json`` and ``data.yaml`` go.
        image_size: images are resized to this square for both models.
        captioning: the captioner's sampling.
        filtering: the filter's threshold and optional ITC top-n.
        shard_size: records per chunk of an input file (one output shard each).
        batch_size: images per batch.
        num_workers: dataloader workers per rank.
        seed: sampling seed.
        trainer: ``lightning.Trainer`` arguments (accelerator, devices, strategy, precision, ...).
    """
    trainer_args = dict(trainer or {})
    unknown = sorted(set(trainer_args) - set(inspect.signature(L.Trainer.__init__).parameters) - {"self"})
    if unknown:  # before the models load: a misspelled key fails at once
        raise ValueError(f"trainer: unknown lightning.Trainer argument(s) {unknown}")
    for name, value, least in (("image_size", image_size, 1), ("shard_size", shard_size, 1),
                               ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):  # fmt: skip
        # before capfilt.json records the settings, so a corrected rerun may start
        check_config(name, value >= least, f">= {least}", value)
    out = Path(output_dir)
    settings = {
        "captioner": captioner,
        "filter": filter,
        "sources": [asdict(s) for s in sources],
        "input_files": input_files(sources),
        "image_root": image_root,
        "image_size": image_size,
        "captioning": asdict(captioning),
        "filtering": asdict(filtering),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "seed": seed,
    }
    check_settings(out, settings)
    plan = make_plan(sources, shard_size)
    task = CapFiltTask(
        BlipModel.from_pretrained(captioner, config=None),
        BlipModel.from_pretrained(filter, config=None),
        captioning,
        filtering,
        seed,
    )
    callbacks = [CapFiltWriter(out, plan)]
    if trainer_args.pop("enable_progress_bar", True):
        callbacks.append(ImagesPerSecondBar())
    runner = L.Trainer(
        **trainer_args,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=len(callbacks) > 1,
        use_distributed_sampler=False,
    )
    datamodule = CapFiltDataModule(plan, out, image_root, image_size, batch_size, num_workers)
    runner.predict(task, datamodule=datamodule, return_predictions=False)
    runner.strategy.barrier("capfilt_predicted")  # every rank's shards are written
    summary = None
    if runner.is_global_zero:
        for chunk in plan.chunks:
            if chunk.human_annotated and not is_done(out, chunk):
                write_human_chunk(out, plan, chunk)
        summary = write_summary(out, plan, image_root)
        for stale in out.glob("*.tmp"):  # left by a killed run; every writer has finished
            stale.unlink()
    runner.strategy.barrier("capfilt_done")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="lightning_blip capfilt", description=__doc__)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML recipe (recipes/capfilt.yaml)"
    )
    parser.add_function_arguments(capfilt)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    cfg = instantiate(parser.parse_args(argv))
    kwargs = {k: v for k, v in vars(cfg).items() if k != "config"}
    summary = capfilt(**kwargs)
    if summary is not None:
        _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\n{'source':16}{'images':>9}{'texts in':>10}{'web kept':>10}{'synthetic kept':>16}{'no text left':>14}"
    )
    for name, s in summary["sources"].items():
        print(
            f"{name:16}{s['images_in']:9d}{s['texts_in']:10d}{s['web_kept']:10d}{s['synthetic_kept']:16d}"
            f"{s['images_no_text_left']:14d}"
        )
