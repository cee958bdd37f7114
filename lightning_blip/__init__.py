"""BLIP and BLIP-2 as PyTorch Lightning components.

The names users reach for first are importable from here (``from lightning_blip import BlipModel,
MEDPretrain, ImageTextDataModule, list_pretrained``); each is imported on first use, so that
``import lightning_blip`` stays cheap (no torch, no Lightning).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "lightning_blip.models": (
        "BlipConfig", "BlipModel", "BlipVQA", "BlipForPretraining", "Blip2Config", "Blip2Model",
        "Blip2ForGeneration", "Blip2LLMConfig", "MEDConfig", "QFormer", "QFormerConfig", "VisionConfig",
        "build_tokenizer",
    ),
    "lightning_blip.tasks": (
        "MEDPretrain", "CaptionFinetune", "VQAFinetune", "RetrievalFinetune", "QFormerStage1", "QFormerStage2",
        "QFormerRetrievalFinetune",
    ),
    "lightning_blip.data": ("ImageTextDataModule", "CaptionDataModule", "VQADataModule", "RetrievalDataModule"),
    "lightning_blip.callbacks": ("MomentumEncoder", "HardNegativeMining", "PredictionWriter"),
    "lightning_blip.weights.registry": ("list_pretrained", "get_pretrained"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_blip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
