"""A callback for tests that SIGKILLs its own process at a given step, as a crash or a preemption would."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Kills the process when batch ``step`` is about to start (the checkpoints of earlier steps are on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
