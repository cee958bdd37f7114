"""Warnings given once per run across a process and the DataLoader workers it starts, epoch after epoch.

DataLoader workers are copies of the main process's dataset, made anew each epoch (unless
``persistent_workers``), so a set kept on the dataset forgets what a worker warned. Each key is
claimed instead by creating a marker file in a folder of the process that made the object:
creation with ``O_EXCL`` succeeds for exactly one process, whichever worker or epoch asks first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any


def _remove_if_owner(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker's copy going away must not remove the shared folder
        shutil.rmtree(folder, ignore_errors=True)


class WarnOnce:
    """``warn(logger, key, message, *args)`` logs a warning the first time ``key`` is given, by any of
    the processes that share this object; the folder goes when the owning process drops the object."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lightning_blip_warned_"))
        self._finalizer = weakref.finalize(self, _remove_if_owner, self.folder, os.getpid())

    def __getstate__(self) -> dict[str, Any]:  # spawned workers: the folder, not the finalizer
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder = state["folder"]

    def first(self, key: str) -> bool:
        """True for the first call with ``key`` among the sharing processes, False afterwards."""
        marker = self.folder / hashlib.sha256(key.encode()).hexdigest()
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def warn(self, logger: logging.Logger, key: str, message: str, *args: Any) -> None:
        if self.first(key):
            logger.warning(message, *args)
