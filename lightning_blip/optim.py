"""Parameter groups and the learning-rate schedules of BLIP and BLIP-2, stepped every optimiser step."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def param_groups(module: nn.Module, no_decay_names: set[str] = frozenset()) -> list[dict]:
    """Split trainable parameters into a decayed group and one with ``weight_decay=0``.

    No decay for biases, norm weights (every 0-/1-d tensor: norms, temperature) and the names in
    ``no_decay_names`` (embeddings, position embeddings, [CLS] tokens). Frozen parameters are left
    out, so they get no optimiser state.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_decay_names:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainingLengthScheduler(LRScheduler):
    """A per-step schedule that learns the run's length from the trainer (:meth:`set_training_length`)."""

    total_steps: int | None = None
    steps_per_epoch: int | None = None

    def set_training_length(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called by the task in ``configure_optimizers`` with the trainer's numbers."""
        self.total_steps = self.total_steps or total_steps
        self.steps_per_epoch = self.steps_per_epoch or steps_per_epoch

    def factor(self, step: int, base_lr: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch, base) for base in self.base_lrs]


class WarmupCosineLR(TrainingLengthScheduler):
    """Linear warm-up from ``warmup_start_lr`` to the base lr, then cosine decay to ``min_lr``.

    BLIP-2 (2k warm-up steps, peak 1e-4) and BLIP's fine-tunes. ``total_steps`` defaults to the
    trainer's estimated stepping batches.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        warmup_start_lr: float = 1e-6,
        min_lr: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        self.warmup_steps, self.warmup_start_lr, self.min_lr = warmup_steps, warmup_start_lr, min_lr
        self.total_steps = total_steps
        super().__init__(optimizer)

    def factor(self, step: int, base_lr: float) -> float:
        if step < self.warmup_steps:
            return (
                self.warmup_start_lr + (base_lr - self.warmup_start_lr) * step / self.warmup_steps
            ) / base_lr
        if step == self.warmup_steps:  # the cosine's start; also the first lr when there is no warm-up,
            return 1.0  # set at construction, before the task knows the run's length
        if self.total_steps is None:
            raise RuntimeError("WarmupCosineLR needs total_steps (set by the task from the trainer)")
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        lr = self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr / base_lr


class WarmupStepDecayLR(TrainingLengthScheduler):
    """BLIP pretraining: linear warm-up in epoch 0, then ``max(min_lr, lr * decay_rate ** epoch)``.

    The paper decays by 0.85 per epoch, the salesforce/BLIP and LAVIS configs by 0.9.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 3000,
        warmup_start_lr: float = 1e-6,
        decay_rate: float = 0.9,
        min_lr: float = 1e-6,
        steps_per_epoch: int | None = None,
    ) -> None:
        self.warmup_steps, self.warmup_start_lr = warmup_steps, warmup_start_lr
        self.decay_rate, self.min_lr = decay_rate, min_lr
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer)

    def factor(self, step: int, base_lr: float) -> float:
        epoch = step // self.steps_per_epoch if self.steps_per_epoch else 0
        if epoch == 0:
            warm = self.warmup_start_lr + (base_lr - self.warmup_start_lr) * step / max(1, self.warmup_steps)
            return min(base_lr, warm) / base_lr
        return max(self.min_lr, base_lr * self.decay_rate**epoch) / base_lr
