"""``fit --ckpt_path=last`` in a new process: the run's newest last checkpoint, and its logger version.

Lightning looks for ``last`` only where the new process would save, which for a logger is a fresh
``version_N+1/checkpoints`` folder, and starts from step 0 when it finds nothing there. Here every
version folder of the first logger (or each ``ModelCheckpoint``'s own ``dirpath``) is searched, the
newest ``last*.ckpt`` wins, and the loggers are pinned to the version folder it was saved in.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

LAST_NAME = re.compile(r"^last(-v?\d+)?\.ckpt$")  # Lightning's last.ckpt, last-v1.ckpt, ...; FSDP2: a folder


def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """The folders the trainer's ``ModelCheckpoint`` callbacks save to, over every logger version.

    Mirrors ``ModelCheckpoint``'s own choice (its ``dirpath``; else ``<save_dir>/<name>/<version>/
    checkpoints`` of the first logger; else ``<default_root_dir>/checkpoints``) without asking the
    logger for its version, which would fix it to a new one.
    """
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append(Path(callback.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
            folders.extend(sorted(p for p in root.glob("*/checkpoints") if p.is_dir()))
        else:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(folders))


def find_last_checkpoint(folders: list[Path]) -> Path | None:
    """The most recently modified ``last*.ckpt`` (file, link or FSDP2 folder) in ``folders``, or None."""
    found = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if LAST_NAME.match(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def logger_version(logger: Logger, checkpoint: Path) -> int | str | None:
    """The version of ``logger`` whose ``checkpoints`` folder holds ``checkpoint``, or None."""
    root = getattr(logger, "root_dir", None)
    folder = checkpoint.parent
    if root is None or folder.name != "checkpoints" or folder.parent.parent.resolve() != Path(root).resolve():
        return None
    name = folder.parent.name
    return int(name.removeprefix("version_")) if re.fullmatch(r"version_\d+", name) else name


def _continue_csv(logger: CSVLogger) -> None:
    """Open ``logger``'s writer on its existing ``metrics.csv`` so that new rows are appended.

    Lightning's writer deletes the file of a folder it finds in use: the file is moved aside while
    the writer is made, then moved back, and the writer is told its columns.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    aside = path.with_name(path.name + ".resume")
    columns: list[str] = []
    if path.is_file():
        with path.open(newline="") as f:
            columns = next(csv.reader(f), [])
    if columns:  # an empty file is left to the writer to delete
        os.replace(path, aside)
    with warnings.catch_warnings():  # "Previous log files ... will be deleted": none are
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment
    if columns:
        os.replace(aside, path)
        writer.metrics_keys = columns


def continue_logging(trainer: L.Trainer, checkpoint: Path) -> None:
    """Pin every logger whose version folder holds ``checkpoint`` to that version (CSV: append).

    Must run before the loggers write anything (before ``fit``). Loggers of other kinds, or a
    checkpoint outside a version folder (an explicit ``dirpath``), are left as they are, with a note.
    """
    for logger in trainer.loggers:
        version = logger_version(logger, checkpoint)
        if version is None or not hasattr(logger, "_version"):
            rank_zero_warn(
                f"{type(logger).__name__} logs to a new version: {checkpoint} is not in its folders"
            )
            continue
        if getattr(logger, "_experiment", None) is not None:
            raise RuntimeError(f"{type(logger).__name__} has started writing; its version cannot be changed")
        logger._version = version  # the loggers take a version only in their constructor
        if isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
            _continue_csv(logger)


def resume_last(trainer: L.Trainer) -> Path:
    """Resolve ``--ckpt_path=last`` for ``fit``: the newest last checkpoint of the run, logging continued.

    Raises:
        FileNotFoundError: no ``last*.ckpt`` in any checkpoint folder of the run (naming them).
    """
    folders = checkpoint_folders(trainer)
    checkpoint = find_last_checkpoint(folders)
    if checkpoint is None:
        searched = ", ".join(str(f) for f in folders) or "(no ModelCheckpoint callback)"
        raise FileNotFoundError(
            f"--ckpt_path=last: no last*.ckpt in {searched}. Resume needs a ModelCheckpoint with "
            "save_last (every recipe has one) and the default_root_dir / logger save_dir of the run; "
            "to start from step 0, leave ckpt_path out."
        )
    rank_zero_info(f"--ckpt_path=last: resuming from {checkpoint}")
    continue_logging(trainer, checkpoint)
    return checkpoint
