"""What every recipe's checkpoints hold: ``last.ckpt`` the latest state, the best one a file of its own."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _checkpoint_callbacks(recipe: Path) -> list[ModelCheckpoint]:
    """The recipe's ``ModelCheckpoint`` callbacks, built from its YAML as the CLI builds them."""
    callbacks = []
    for entry in (yaml.safe_load(recipe.read_text()).get("trainer") or {}).get("callbacks") or []:
        module, name = entry["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        if issubclass(cls, ModelCheckpoint):
            callbacks.append(cls(**entry.get("init_args", {})))
    return callbacks


def _writes_last(callback: ModelCheckpoint) -> bool:
    return bool(callback.save_last) or callback.filename == callback.CHECKPOINT_NAME_LAST


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_last_is_the_latest_state_and_the_best_a_named_file(recipe):
    callbacks = _checkpoint_callbacks(recipe)
    if recipe.name == "capfilt.yaml":  # a command's recipe, no trainer callbacks
        assert not callbacks
        return
    assert [cb for cb in callbacks if _writes_last(cb)], "no last.ckpt"
    assert len([cb for cb in callbacks if _writes_last(cb)]) == 1  # two writers: last.ckpt and last-v1.ckpt
    for cb in callbacks:
        if cb.monitor is None:
            continue
        # Lightning's save_last on a monitored callback updates last.ckpt only when the metric improves
        assert not cb.save_last, "a monitored ModelCheckpoint must not write last.ckpt"
        metric = cb.monitor.replace("/", "_")
        assert cb.filename.startswith("best-") and f"{metric}={{{cb.monitor}" in cb.filename, cb.filename
        assert not cb.auto_insert_metric_name  # else "val/cider=" makes a folder "val"
    if any(cb.monitor for cb in callbacks):
        (last,) = [cb for cb in callbacks if _writes_last(cb)]
        assert last.monitor is None and last.save_top_k == 1 and last._every_n_epochs == 1
        assert last._save_on_train_epoch_end


class _WorseEveryEpoch(L.LightningModule):
    """A linear model whose logged validation metrics fall every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).square().mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        for name in ("val/cider", "val/r_mean"):
            self.log(name, 1.0 / (self.current_epoch + 1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("recipe", ["caption_coco", "retrieval_coco"])
def test_last_ckpt_follows_training_when_the_metric_gets_worse(tmp_path, recipe):
    callbacks = _checkpoint_callbacks(REPO / "recipes" / f"{recipe}.yaml")
    loader = torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)  # 4 steps per epoch
    trainer = L.Trainer(
        max_epochs=3, callbacks=callbacks, default_root_dir=tmp_path, logger=False, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_WorseEveryEpoch(), loader, loader)
    folder = tmp_path / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["global_step"], last["epoch"]) == (12, 2)  # the end of the third epoch
    names = sorted(p.name for p in folder.iterdir())
    metric = callbacks[0].monitor.replace("/", "_")
    assert names == [f"best-epoch=0-step=4-{metric}=1.0000.ckpt", "last.ckpt"]
    assert torch.load(folder / names[0], weights_only=True)["global_step"] == 4
