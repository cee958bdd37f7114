"""Where a ViT's weights come from: a released name (cached, else downloaded), ``random`` on purpose, or
nothing, which training refuses for a frozen encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_blip2, tiny_vision
from safetensors.torch import save_file

from lightning_blip.models.shared.vision import VisionEncoder
from lightning_blip.tasks import QFormerStage1
from lightning_blip.weights import registry

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_a_released_name_loads_the_cached_file(tmp_path, monkeypatch):
    source = VisionEncoder(tiny_vision()).eval()
    monkeypatch.setenv("LIGHTNING_BLIP_CACHE", str(tmp_path))
    entry = registry.Pretrained(
        "tiny-vit", "https://example.invalid/tiny_vit.safetensors", "timm", "", "test"
    )
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, entry))
    save_file(
        {k: v.contiguous() for k, v in source.vit.state_dict().items()}, tmp_path / "tiny_vit.safetensors"
    )
    loaded = VisionEncoder(tiny_vision(weights="tiny-vit")).eval()  # a cache hit: nothing is fetched
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(pixels), source(pixels))


def test_a_frozen_encoder_left_random_is_refused_naming_the_setting():
    config = tiny_blip2()
    config.vision.weights = None
    with pytest.raises(ValueError, match=r"model\.init_args\.config\.vision\.weights is not set"):
        QFormerStage1(config)
    config.vision.weights = "random"  # said on purpose: accepted
    QFormerStage1(config)
    config.vision.weights, config.freeze_vision = None, False  # trained, not frozen: accepted
    QFormerStage1(config)


@pytest.mark.parametrize(
    ("recipe", "weights"),
    [
        ("blip_pretrain.yaml", "vit-b16-deit"),
        ("blip_pretrain_vitl.yaml", "vit-l16-augreg"),
        ("blip2_stage1.yaml", "eva-vit-g"),
        ("blip2_stage1_vitl.yaml", "clip-vit-l14"),
        ("blip2_stage2_opt.yaml", "eva-vit-g"),
        ("blip2_stage2_flant5.yaml", "eva-vit-g"),
        ("blip2_caption_coco.yaml", "eva-vit-g"),
        ("blip2_retrieval_coco.yaml", "eva-vit-g"),
    ],
)
def test_pretraining_recipes_start_from_the_papers_vision_weights(recipe, weights):
    vision = yaml.safe_load((RECIPES / recipe).read_text())["model"]["init_args"]["config"]["vision"]
    entry = registry.get_pretrained(vision["weights"])
    assert vision["weights"] == weights and entry.format in ("timm", "eva-vit-g")
    assert entry.config["model_name"] == vision["model_name"]  # the architecture the weights are for


@pytest.mark.parametrize(
    "recipe", ["blip_pretrain", "blip_pretrain_vitl", "blip2_stage1", "blip2_stage1_vitl"]
)
def test_pretraining_recipes_start_the_text_side_from_bert(recipe):
    init = yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())["model"]["init_args"]["init_weights"]
    assert registry.get_pretrained(init).format == "hf-bert"
