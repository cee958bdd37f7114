"""Shared Lightning glue: optimiser and schedule from the recipe, deterministic per-step seeding."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_blip.optim import TrainingLengthScheduler, param_groups
from lightning_blip.weights.keymap import LoadReport

log = logging.getLogger(__name__)


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, weight decay 0.05 (recipes choose their own)."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)


def step_seed(base_seed: int, step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (base seed, optimiser step, rank)."""
    digest = hashlib.blake2b(f"{base_seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def report_init_weights(source: str, report: LoadReport) -> None:
    """Print (rank zero) what ``init_weights`` loaded, in the counts ``lightning_blip convert`` prints."""
    rank_zero_info(f"init_weights {source}: {report.summary()}")


class BlipTask(L.LightningModule):
    """Base of every task module.

    * The optimiser and learning-rate schedule come from the recipe (``optimizer:`` and
      ``lr_scheduler:`` callables); parameter groups without weight decay for biases, norms,
      embeddings and the temperature are built here, from trainable parameters only.
    * Each training step reseeds torch's RNG from (seed, step, rank), so dropout and negative
      sampling after a resume are the same as in an uninterrupted run.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.base_seed: int | None = None
        self.skipped_samples = 0

    def trainable_module(self) -> nn.Module:
        """The module whose parameters are optimised (subclasses return their model)."""
        return self

    def no_weight_decay(self) -> set[str]:
        """Names (relative to :meth:`trainable_module`) of parameters without weight decay."""
        return set()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self.trainable_module(), self.no_weight_decay()))
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, TrainingLengthScheduler):
            total = int(self.trainer.estimated_stepping_batches)
            scheduler.set_training_length(total, max(1, self.steps_per_epoch()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch of the attached trainer."""
        trainer = self.trainer
        if trainer.num_training_batches == float("inf"):  # not known yet with max_steps runs
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if batches == float("inf"):  # an iterable data set without a length
            return 1
        return max(
            1, math.ceil(int(batches) / trainer.accumulate_grad_batches)
        )  # a last, partial window steps

    def on_fit_start(self) -> None:
        if self.base_seed is None:
            self.base_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.base_seed, self.global_step, self.global_rank))

    def log_losses(self, losses: dict[str, torch.Tensor], batch_size: int, **scalars: float) -> torch.Tensor:
        """Log each loss (``train/<name>``), their sum ``train/loss`` and ``scalars``; return the sum."""
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch_size, sync_dist=True)
        self.log("train/loss", loss, batch_size=batch_size, prog_bar=True, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in scalars.items()}, batch_size=batch_size)
        return loss

    def log_skipped(self, batch: dict) -> None:
        """Log how many unreadable samples training has skipped so far, over all ranks.

        The total is summed over ranks every step, so it is the same on every rank and a checkpoint
        carries it across a resume."""
        if "num_skipped" in batch:
            skipped = torch.tensor(float(batch["num_skipped"]), device=self.device)
            self.skipped_samples += int(self.trainer.strategy.reduce(skipped, reduce_op="sum").item())
            self.log("data/skipped_samples", float(self.skipped_samples), batch_size=1)

    def log_token_mean(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """Log ``total / count`` weighted by ``count``: the epoch value, synced over ranks, is the mean
        over every token. A rank with no token (an empty batch) logs it with weight 0: every rank must
        log the name, or the epoch-end sync waits for it."""
        self.log(name, total / count.clamp(min=1), sync_dist=True, batch_size=int(count))

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a collective: every rank must call it)."""
        value = torch.tensor(float(flag), device=self.device)
        return bool(self.trainer.strategy.reduce(value, reduce_op="sum").item() > 0)

    def _log_evaluation_skips(self, stage: str, batch: Any) -> None:
        if isinstance(batch, dict) and "num_skipped" in batch:
            skipped = float(batch["num_skipped"])
            self.log(f"{stage}/skipped_samples", skipped, reduce_fx="sum", on_step=False, on_epoch=True,
                     sync_dist=True, batch_size=1)  # fmt: skip

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log_evaluation_skips("val", batch)

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log_evaluation_skips("test", batch)

    def on_predict_epoch_start(self) -> None:
        self._predict_skipped = 0

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, dict) and "num_skipped" in batch:
            self._predict_skipped += int(batch["num_skipped"])

    def on_predict_epoch_end(self) -> None:
        if self._predict_skipped:  # predict cannot log: a warning per rank
            log.warning("rank %d skipped %d unreadable samples: no prediction for them",
                        self.global_rank, self._predict_skipped)  # fmt: skip

    # frozen weights (BLIP-2's image encoder and LLM) stay out of checkpoints -----------------------
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of frozen weights, which checkpoints leave out (subclasses)."""
        return ()

    def frozen_sources(self) -> dict:
        """Where the frozen weights come from (model names, local paths), written into checkpoints."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["base_seed"] = self.base_seed
        checkpoint["skipped_samples"] = self.skipped_samples
        prefixes = self.frozen_prefixes()
        if not prefixes:
            return
        checkpoint["frozen_weights"] = {"prefixes": list(prefixes), "sources": self.frozen_sources()}
        # a sharded (distributed) checkpoint keeps them, since Lightning's resume loads every key of
        # it; `lightning_blip consolidate` leaves them out of the single file it writes
        if "state_dict" in checkpoint and not _is_distributed_checkpoint(self):
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.base_seed = checkpoint.get("base_seed")
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        if "frozen_weights" in checkpoint and "state_dict" in checkpoint:
            # the frozen weights this module was built with (from their sources) fill the gap
            prefixes = tuple(checkpoint["frozen_weights"]["prefixes"])
            state = checkpoint["state_dict"]
            for key, value in self.state_dict().items():
                if key.startswith(prefixes):
                    state.setdefault(key, value)


def _is_distributed_checkpoint(module: L.LightningModule) -> bool:
    strategy = module._trainer.strategy if module._trainer is not None else None
    return bool(getattr(strategy, "_save_distributed_checkpoint", False))
