"""Shared fixtures: tiny random configs (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from lightning_blip.models.blip import BlipConfig, MEDConfig
from lightning_blip.models.blip2 import Blip2Config, QFormerConfig
from lightning_blip.models.shared.vision import VisionConfig


def tiny_vision(image_size: int = 32, timm_kwargs_extra: dict | None = None, **kw) -> VisionConfig:
    """A 2-block ViT with 8-px patches."""
    timm_kwargs = {"embed_dim": 48, "depth": 2, "num_heads": 4, "patch_size": 8, **(timm_kwargs_extra or {})}
    return VisionConfig("vit_tiny_patch16_224", image_size=image_size, timm_kwargs=timm_kwargs, **kw)


def tiny_text(**kw) -> MEDConfig:
    """A 2-layer MED text transformer, 64 wide."""
    base = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}
    base.update(kw)
    return MEDConfig(**base)


def tiny_blip(dropout: float = 0.0, **kw) -> BlipConfig:
    return BlipConfig(
        vision=tiny_vision(), text=tiny_text(dropout=dropout, attention_dropout=dropout), embed_dim=32, **kw
    )


def tiny_qformer(**kw) -> QFormerConfig:
    """A 4-layer Q-Former, 64 wide, 8 queries, cross-attention every 2nd layer, no dropout."""
    base = {
        "hidden_size": 64,
        "num_layers": 4,
        "num_heads": 4,
        "intermediate_size": 128,
        "encoder_width": 48,
        "num_query_tokens": 8,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    }
    base.update(kw)
    return QFormerConfig(**base)


def tiny_blip2(**qformer_kw) -> Blip2Config:
    """Tiny frozen ViT (its last block removed, no final norm) + tiny Q-Former."""
    vision = tiny_vision(
        timm_kwargs_extra={"depth": 3}, num_removed_blocks=1, final_norm=False, weights="random"
    )
    return Blip2Config(vision=vision, qformer=tiny_qformer(**qformer_kw), embed_dim=32)


@pytest.fixture
def blip_config() -> BlipConfig:
    return tiny_blip()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many tiny passes (two oversubscribe a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def text_batch(batch: int = 4, length: int = 7, vocab: tuple[int, int] = (1000, 2000)) -> tuple:
    """Random [CLS]-first token ids ``(B, L)`` ending in [SEP], with some right padding."""
    ids = torch.randint(*vocab, (batch, length))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    for row in range(batch):
        end = length - (row % 3)
        ids[row, end - 1] = 102
        ids[row, end:] = 0
        mask[row, end:] = 0
    return ids, mask


def convert_ours_to_transformers(model: torch.nn.Module, tmp_path, task: str) -> tuple:
    """``lightning_blip convert --from ours --to transformers --task TASK`` on a ``--to ours`` directory of
    ``model`` (``model.safetensors`` + ``config.json``); returns ``(that directory, the output)``."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    from lightning_blip.convert import command as convert

    src, out = tmp_path / "ours", tmp_path / "hf"
    src.mkdir()
    save_file({k: v.clone() for k, v in model.state_dict().items()}, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(asdict(model.config)))
    convert.main(["--from", "ours", "--to", "transformers", "--task", task, str(src), str(out)])
    return src, out
