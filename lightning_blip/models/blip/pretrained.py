"""BLIP models from other formats: our :class:`BlipConfig` of a transformers or salesforce/LAVIS
checkpoint, and the loaders ``BlipModel.from_pretrained`` / ``BlipVQA.from_pretrained`` add to the
common ones (:data:`BLIP_LOADERS`). The key tables are in :mod:`lightning_blip.weights`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lightning_blip.models.blip.config import BlipConfig
from lightning_blip.models.blip.med import MEDConfig
from lightning_blip.models.shared.pretrained import Loader, _from_ours
from lightning_blip.models.shared.vision import VisionConfig, vision_config_from_transformers
from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.salesforce_blip import load_salesforce_blip
from lightning_blip.weights.transformers_blip import bert_fields_from_transformers, load_transformers_blip
from lightning_blip.weights.transformers_blip_vqa import load_transformers_blip_vqa


def blip_config_from_transformers(directory: str | Path) -> tuple[BlipConfig, list[str]]:
    """Our :class:`BlipConfig` for a transformers BLIP ``config.json``, and notes on what differs.

    Read with transformers' ``BlipConfig`` so that defaults left out of the file are filled in.
    """
    from transformers import BlipConfig as HFBlipConfig

    hf = HFBlipConfig.from_pretrained(str(directory), local_files_only=True)
    v, t = hf.vision_config, hf.text_config
    vision = vision_config_from_transformers(v, "vit_base_patch16_224")  # sizes from v
    text = MEDConfig(**bert_fields_from_transformers(t))
    config = BlipConfig(
        vision=vision,
        text=text,
        embed_dim=hf.image_text_hidden_size,
        bos_token_id=t.bos_token_id,
        sep_token_id=t.sep_token_id,
        pad_token_id=t.pad_token_id,
    )
    notes = []
    if v.hidden_act != "gelu" or t.hidden_act != "gelu":
        notes.append(f"activations {v.hidden_act!r}/{t.hidden_act!r}: ours use exact GELU")
    return config, notes


VIT_PRESETS: dict[str, dict] = {
    "base": {"model_name": "vit_base_patch16_224"},  # ViT-B/16: 768 wide, 12 blocks, 12 heads
    "large": {"model_name": "vit_large_patch16_224"},  # ViT-L/16: 1024 wide, 24 blocks, 16 heads
}
"""BLIP's two ViTs (``create_vit('base'|'large')``); the text side is BERT-base in both."""


def blip_config(preset: str, state: dict[str, Tensor], image_size: int | None = None) -> BlipConfig:
    """Our config for a salesforce/LAVIS checkpoint: ``preset`` is ``"base"``, ``"large"`` or the path
    of a ``config.json`` of ours (``BlipConfig`` as a dict).

    ``image_size`` None: a preset takes the checkpoint's own (from its ``pos_embed`` grid, 16-px
    patches), a config file its own; given, the position embeddings are resampled to it.
    """
    if preset in VIT_PRESETS:
        config = BlipConfig(vision=VisionConfig(**VIT_PRESETS[preset]))
        if image_size is None:
            grid = math.isqrt(state["visual_encoder.pos_embed"].shape[1] - 1)
            image_size = grid * 16
    elif Path(preset).is_file():
        config = BlipConfig.from_dict(json.loads(Path(preset).read_text()))
    else:
        raise ValueError(f"config must be one of {sorted(VIT_PRESETS)} or a config.json file, got {preset!r}")
    if image_size is not None:
        config.vision.image_size = image_size
    return config


def _from_transformers_blip(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    model = cls(config if config is not None else blip_config_from_transformers(path)[0])
    load = load_transformers_blip_vqa if cls.__name__ == "BlipVQA" else load_transformers_blip
    load(model, path, strict=strict)
    return model


def _from_salesforce(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    """``config``: our ``BlipConfig``, or ``"base"`` / ``"large"`` (BLIP's ViT-B/16, ViT-L/16; default base)."""
    state = load_state_dict_file(path)  # read once: for the sizes and the weights
    if config is None or isinstance(config, str):
        config = blip_config(config or "base", state)
    model = cls(config)
    load_salesforce_blip(model, state, strict=strict)
    return model


BLIP_LOADERS: dict[str, Loader] = {
    "ours": _from_ours,
    "transformers": _from_transformers_blip,
    "salesforce": _from_salesforce,
}
"""format -> loader of ``BlipModel`` and ``BlipVQA`` (beside the Lightning formats every model reads)."""
