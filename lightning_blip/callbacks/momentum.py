"""The EMA update of momentum encoders, after each optimiser step."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_blip.callbacks.settings import warn_replaced_settings


class MomentumEncoder(Callback):
    """Update the momentum copies ``p_m = m * p_m + (1 - m) * p`` after every optimiser step.

    Works with any module that has ``momentum_update(momentum)``. The update runs on the
    parameters as they are stored, so under FSDP2 each rank updates its own shards.

    Args:
        momentum: EMA coefficient (BLIP: 0.995).
    """

    def __init__(self, momentum: float = 0.995) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self._last_step:  # an optimiser step happened (not accumulating)
            self._last_step = trainer.global_step
            pl_module.momentum_update(self.momentum)

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        warn_replaced_settings(type(self).__name__, {"momentum": self.momentum}, state_dict)
        self.momentum = state_dict["momentum"]
