"""Learning-rate schedules (hand-checked values)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lightning_blip.optim import WarmupCosineLR, WarmupStepDecayLR


def _lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_step_decay_warms_up_in_epoch_zero_then_decays_per_epoch():
    s = WarmupStepDecayLR(_opt(3e-4), warmup_steps=4, warmup_start_lr=1e-6, decay_rate=0.9, min_lr=1e-6)
    s.set_training_length(total_steps=30, steps_per_epoch=10)
    lrs = _lrs(s, 30)
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[2] == pytest.approx(1e-6 + (3e-4 - 1e-6) * 2 / 4)
    assert lrs[4:10] == pytest.approx([3e-4] * 6)
    assert lrs[10:20] == pytest.approx([3e-4 * 0.9] * 10)
    assert lrs[20] == pytest.approx(3e-4 * 0.81)


def test_step_decay_respects_min_lr():
    s = WarmupStepDecayLR(_opt(1e-3), warmup_steps=0, decay_rate=0.1, min_lr=5e-5, steps_per_epoch=1)
    assert _lrs(s, 4)[1:] == pytest.approx([1e-4, 5e-5, 5e-5])


def test_cosine_after_warmup_reaches_min_lr_at_total_steps():
    s = WarmupCosineLR(_opt(1e-4), warmup_steps=2, warmup_start_lr=0.0, min_lr=1e-5)
    s.set_training_length(total_steps=12, steps_per_epoch=4)
    lrs = _lrs(s, 13)
    assert lrs[:3] == pytest.approx([0.0, 5e-5, 1e-4])
    assert lrs[7] == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[12] == pytest.approx(1e-5)


def test_cosine_without_length_fails_clearly():
    s = WarmupCosineLR(_opt(1e-4), warmup_steps=1)
    s.optimizer.step()
    s.step()  # the end of the warm-up is the cosine's start, whatever the length
    with pytest.raises(RuntimeError, match="total_steps"):
        s.step()


def test_cosine_without_warmup_is_built_before_the_length_is_known():
    s = WarmupCosineLR(_opt(1e-4), warmup_steps=0)  # an lr is computed at construction
    s.set_training_length(total_steps=4, steps_per_epoch=4)
    assert _lrs(s, 5) == pytest.approx([1e-4 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)])


def test_a_per_epoch_schedule_counts_the_last_partial_accumulation_window(tmp_path):
    """10 batches, 3 per step: Lightning steps 4 times an epoch (the last window has one batch), and
    the learning rate changes exactly when the epoch does."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_blip.tasks.base import BlipTask

    class Task(BlipTask):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.linear, self.seen = torch.nn.Linear(2, 1), []

        def training_step(self, batch, batch_idx):
            return self.linear(batch[0]).pow(2).mean()

        def on_before_optimizer_step(self, optimizer) -> None:
            self.seen.append((self.current_epoch, optimizer.param_groups[0]["lr"]))

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=1)

    schedule = partial(WarmupStepDecayLR, warmup_steps=1, warmup_start_lr=1.0, decay_rate=0.5, min_lr=1e-6)
    task = Task(optimizer=partial(torch.optim.SGD, lr=1.0), lr_scheduler=schedule)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, accumulate_grad_batches=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task)
    assert task.steps_per_epoch() == 4 == trainer.global_step // 3
    assert task.seen == [(epoch, 0.5**epoch) for epoch in range(3) for _ in range(4)]
