"""MEDPretrain glue: default callbacks, EMA after optimiser steps, parameter groups, alpha ramp."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import tiny_blip
from fake_data import write_fake_dataset

from lightning_blip.callbacks import HardNegativeMining, MomentumEncoder
from lightning_blip.data import ImageTextDataModule
from lightning_blip.tasks import MEDPretrain


def _module(**kw) -> MEDPretrain:
    return MEDPretrain(tiny_blip(), queue_size=16, **kw)


def _datamodule(tmp_path, n: int = 16) -> ImageTextDataModule:
    annotations = write_fake_dataset(tmp_path / "images", num_images=n)
    return ImageTextDataModule(
        str(annotations), image_root=str(annotations.parent), image_size=32, batch_size=4, num_workers=0
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    base = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**base, **kw})


def test_bare_module_adds_both_callbacks_and_recipe_ones_take_precedence(tmp_path):
    module = _module()
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    kinds = [type(c) for c in trainer.callbacks]
    assert kinds.count(MomentumEncoder) == 1 and kinds.count(HardNegativeMining) == 1

    mine = HardNegativeMining(strategy="hardest", pool="global")
    module = _module()
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[mine])
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    assert [c for c in trainer.callbacks if isinstance(c, HardNegativeMining)] == [mine]
    assert module.negative_sampler is mine.sampler and module.negative_sampler.strategy == "hardest"


def test_momentum_update_runs_once_per_optimiser_step(tmp_path):
    module = _module()
    calls = []
    module.momentum_update = lambda m: calls.append(m)  # type: ignore[method-assign]
    trainer = _trainer(tmp_path, max_steps=2, accumulate_grad_batches=2, callbacks=[MomentumEncoder(0.9)])
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    assert calls == [0.9, 0.9]  # 4 batches, 2 optimiser steps


def test_ema_is_applied_to_momentum_weights_during_training(tmp_path):
    module = _module()
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[MomentumEncoder(0.5)])
    before = {n: p.clone() for n, p in module.model.visual_encoder_m.named_parameters()}
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    online = dict(module.model.blip.visual_encoder.named_parameters())
    for name, p_m in module.model.visual_encoder_m.named_parameters():
        torch.testing.assert_close(p_m, 0.5 * before[name] + 0.5 * online[name])


def test_callback_state_round_trips_and_a_replaced_setting_is_named():
    cb = HardNegativeMining("hardest", "global", 0.0)
    other = HardNegativeMining()
    sampler = other.sampler
    with pytest.warns(
        UserWarning, match=r"HardNegativeMining: resuming keeps .*strategy='hardest' \(configured 'sample'\)"
    ):
        other.load_state_dict(cb.state_dict())
    assert other.sampler is sampler and (sampler.strategy, sampler.pool, sampler.epsilon) == (
        "hardest",
        "global",
        0.0,
    )
    m = MomentumEncoder(0.99)
    m2 = MomentumEncoder()
    with pytest.warns(UserWarning, match=r"momentum=0.99 \(configured 0.995\)"):
        m2.load_state_dict(m.state_dict())
    assert m2.momentum == 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same settings: nothing to say
        MomentumEncoder(0.99).load_state_dict(m.state_dict())
        HardNegativeMining("hardest", "global", 0.0).load_state_dict(cb.state_dict())
    with pytest.raises(ValueError):
        MomentumEncoder(1.5)


def test_parameter_groups_exclude_frozen_and_skip_decay_where_due():
    module = _module(optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05))
    module.trainer = SimpleNamespace()  # no scheduler: the optimizer alone
    optimizer = module.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert not any("_m." in n for n in decayed | plain)  # momentum copies: no optimiser state
    assert {
        "blip.temp",
        "blip.text.embeddings.word_embeddings.weight",
        "blip.visual_encoder.vit.pos_embed",
        "blip.visual_encoder.vit.cls_token",
    } <= plain
    assert all(n.endswith(".weight") for n in decayed) and not any("norm" in n for n in decayed)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert decayed | plain == trainable


def test_alpha_ramps_over_the_first_epochs():
    module = _module(alpha=0.4, alpha_ramp_epochs=2)
    module.steps_per_epoch = lambda: 10  # type: ignore[method-assign]
    for step, expected in [(0, 0.0), (5, 0.1), (10, 0.2), (20, 0.4), (50, 0.4)]:
        module._trainer = SimpleNamespace(global_step=step)
        assert module.current_alpha() == pytest.approx(expected)
