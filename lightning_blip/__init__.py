"""BLIP and BLIP-2 as PyTorch Lightning components.

The classes users reach for first are importable from here (``from lightning_blip import BlipModel,
MEDPretrain, ImageTextDataModule, list_pretrained``); each is loaded from its module on first use, so that ``import
lightning_blip`` imports neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ("BlipConfig", "BlipModel", "BlipVQA", "BlipForPretraining", "MEDConfig"),
        "lightning_blip.models.blip",
    ),
    **dict.fromkeys(
        ("Blip2Config", "Blip2Model", "Blip2LLMConfig", "Blip2ForGeneration", "QFormer", "QFormerConfig"),
        "lightning_blip.models.blip2",
    ),
    **dict.fromkeys(("VisionConfig", "build_tokenizer"), "lightning_blip.models"),
    **dict.fromkeys(
        (
            "MEDPretrain",
            "QFormerStage1",
            "QFormerStage2",
            "CaptionFinetune",
            "VQAFinetune",
            "RetrievalFinetune",
            "QFormerRetrievalFinetune",
        ),
        "lightning_blip.tasks",
    ),
    **dict.fromkeys(
        (
            "ImageTextDataModule",
            "CaptionDataModule",
            "VQADataModule",
            "RetrievalDataModule",
            "EasyVQACaptionDataModule",
            "EasyVQADataModule",
        ),
        "lightning_blip.data",
    ),
    **dict.fromkeys(
        ("MomentumEncoder", "HardNegativeMining", "PredictionWriter"), "lightning_blip.callbacks"
    ),
    **dict.fromkeys(("WarmupCosineLR", "WarmupStepDecayLR"), "lightning_blip.optim"),
    **dict.fromkeys(("list_pretrained", "get_pretrained"), "lightning_blip.weights.registry"),
}
"""Name -> the module that defines or re-exports it."""

__all__ = sorted(_HOMES)  # noqa: PLE0605 (the table's names; a literal would repeat each)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
