"""How the ITM negatives are chosen, as a callback a recipe configures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_blip.callbacks.settings import warn_replaced_settings
from lightning_blip.losses.itm import NegativeSampler


class HardNegativeMining(Callback):
    """Sets the module's ``negative_sampler``: ITM negatives sampled or hardest, local or global.

    Args:
        strategy: ``"sample"`` (multinomial, the paper) or ``"hardest"`` (argmax, deterministic).
        pool: ``"local"`` (this rank's batch: BLIP pretraining) or ``"global"`` (all ranks' batches:
            BLIP retrieval on COCO with ``negative_all_rank``).
        epsilon: added to the softmax weights (BLIP pretraining 1e-4, retrieval 0).
    """

    def __init__(
        self,
        strategy: Literal["sample", "hardest"] = "sample",
        pool: Literal["local", "global"] = "local",
        epsilon: float = 1e-4,
    ) -> None:
        self.sampler = NegativeSampler(strategy, pool, epsilon)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.negative_sampler = self.sampler

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.sampler)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # update in place: the module already holds this sampler (setup runs before restoring)
        restored = NegativeSampler(**state_dict)
        warn_replaced_settings(type(self).__name__, asdict(self.sampler), asdict(restored))
        for name, value in asdict(restored).items():
            setattr(self.sampler, name, value)
