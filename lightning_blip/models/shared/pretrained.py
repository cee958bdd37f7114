"""``from_pretrained(path)``: one of our models from a checkpoint of any format we read.

The format is told from the path, never from a flag:

- ``lightning``: a Lightning ``.ckpt`` of one of our tasks (``state_dict`` + ``hyper_parameters``
  holding our model config). Frozen weights left out of it (``frozen_weights``) come from where the
  config says (the LLM's name or path, ``vision.weights``).
- ``lightning-distributed``: the directory ``ModelParallelStrategy`` (FSDP2) writes, with
  ``.metadata``; its shards are merged in a temporary directory first.
- ``ours``: a directory written by ``lightning_blip convert ... --to ours`` (``config.json`` of our
  config + ``model.safetensors``).
- ``transformers``: a ``save_pretrained`` directory whose ``config.json`` has a ``model_type``.
- ``salesforce`` / ``lavis-blip2``: a weights file of salesforce/BLIP (or LAVIS's BLIP) or of LAVIS's
  BLIP-2, told apart by their key names. They hold no config: pass ``config`` (BLIP: our config or
  ``"base"`` / ``"large"``, default base; BLIP-2: our config, which names the LLM).
- A transformers ``Blip2ForConditionalGeneration`` directory serves as its own LLM source: the
  model's ``config.llm`` is that directory, whose ``language_model.*`` weights fill the LLM.

Which loader serves which format: :data:`COMMON_LOADERS` (every model) and the model class's
``pretrained_loaders`` (its family's, in ``models/blip/pretrained.py`` and ``models/blip2/pretrained.py``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from safetensors import safe_open
from torch import nn

from lightning_blip.models.shared.vision import VisionConfig
from lightning_blip.weights.checkpoint_io import load_state_dict_file, load_torch_file, unwrap_state_dict
from lightning_blip.weights.download import resolve_pretrained
from lightning_blip.weights.keymap import load_own_state
from lightning_blip.weights.registry import Pretrained

DISTRIBUTED_METADATA = ".metadata"


def detect_format(path: str | Path) -> str:
    """The format of ``path`` (see the module docstring).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a directory or file that is none of the formats (what it lacks is named).
    """
    path = Path(path)
    if path.is_dir():
        if (path / DISTRIBUTED_METADATA).is_file():
            return "lightning-distributed"
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path}: a checkpoint directory needs {DISTRIBUTED_METADATA} or config.json")
        return "transformers" if "model_type" in json.loads(config_file.read_text()) else "ours"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # the key names only: safetensors' header, or a memory-mapped torch file (no tensor is read)
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    else:
        head = load_torch_file(path, mmap=True)
        if isinstance(head, dict) and "state_dict" in head and "hyper_parameters" in head:
            return "lightning"
        state = unwrap_state_dict(head)
        keys = list(state) if isinstance(state, dict) else []
    if any(k.startswith("Qformer.") for k in keys):
        return "lavis-blip2"
    if any(
        k.startswith(("visual_encoder.blocks.", "text_encoder.encoder.", "text_decoder.bert.")) for k in keys
    ):
        return "salesforce"
    if any(k.startswith("vision_model.") for k in keys):
        return "transformers"
    return "ours"


def read_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, from a ``.ckpt`` file or a distributed-checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        return load_torch_file(path)
    from lightning_blip.weights.distributed import consolidate

    with tempfile.TemporaryDirectory() as tmp:
        merged = consolidate(path, Path(tmp) / "merged.ckpt")
        return load_torch_file(merged)


def _from_lightning(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    checkpoint = read_lightning_checkpoint(path)
    if config is None:
        values = checkpoint.get("hyper_parameters", {}).get("config")
        if values is None:
            raise ValueError(f"{path}: no model config in the checkpoint's hyper_parameters; pass config=")
        config = cls.config_class.from_dict(values)
    if hasattr(config, "stage1_checkpoint"):  # the checkpoint holds the trained Q-Former already
        config = replace(config, stage1_checkpoint=None)
    model = cls(config)
    frozen = tuple(checkpoint.get("frozen_weights", {}).get("prefixes", ()))
    frozen = tuple(p.removeprefix("model.").removeprefix("blip2.") for p in frozen)
    load_own_state(model, checkpoint["state_dict"], frozen, strict, str(path))
    return model


def _from_ours(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    if config is None:
        config = cls.config_class.from_dict(json.loads((path / "config.json").read_text()))
    model = cls(config)
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    load_own_state(model, load_state_dict_file(path / "model.safetensors"), frozen, strict, str(path))
    return model


Loader = Callable[[type[nn.Module], Path, Any, bool], nn.Module]
"""``loader(cls, path, config, strict)``: ``cls`` built and filled from ``path``."""

COMMON_LOADERS: dict[str, Loader] = {"lightning": _from_lightning, "lightning-distributed": _from_lightning}
"""The formats every model reads; a family adds its own in ``pretrained_loaders``."""


def loaders_of(cls: type[nn.Module]) -> dict[str, Loader]:
    """format -> loader for ``cls``: :data:`COMMON_LOADERS` and the family's ``pretrained_loaders``."""
    if not hasattr(cls, "config_class"):
        raise TypeError(f"from_pretrained does not know {cls.__name__}")
    return {**COMMON_LOADERS, **cls.pretrained_loaders}


def registry_config(cls: type[nn.Module], entry: Pretrained) -> Any:
    """The config a registered checkpoint needs when the caller gives none: salesforce/BLIP's preset
    (``"base"`` / ``"large"``; the image size is read from the file), LAVIS BLIP-2's ViT, image size and
    LLM; None for formats that carry their own."""
    if entry.format == "salesforce":
        return entry.config["vit"]
    if entry.format != "lavis-blip2":
        return None
    if entry.config["vit"] == "clip_vit_l14":
        vision = VisionConfig("vit_large_patch14_clip_quickgelu_224", num_removed_blocks=1, final_norm=False)
    else:
        vision = VisionConfig("eva_giant_patch14_224", num_removed_blocks=1, final_norm=False)
    vision.image_size = entry.config["image_size"]
    if "llm" in entry.config:
        return cls.config_class(vision=vision, llm=entry.config["llm"])
    return cls.config_class(vision=vision)


def from_pretrained(
    cls: type[nn.Module], path: str | Path, config: Any = None, strict: bool = True
) -> nn.Module:
    """Build ``cls`` and fill it from ``path`` of any format we read (see the module docstring).

    Args:
        cls: ``BlipModel``, ``BlipVQA``, ``Blip2Model`` or ``Blip2ForGeneration``.
        path: a checkpoint file or directory, or the name of a released checkpoint
            (``lightning_blip list-pretrained``): found in the cache, else downloaded (:mod:`.download`).
        config: our config for the model (default: the one the checkpoint carries, or for a released
            name the one it needs (:func:`registry_config`); required for other formats that carry none).
        strict: fail on missing (beyond the weights the format is known not to hold) or unexpected keys.
    """
    path, entry = resolve_pretrained(path)
    if entry is not None:
        if entry.model != cls.__name__:
            raise ValueError(
                f"{entry.name} is a {entry.model or entry.format} checkpoint, not a {cls.__name__}"
            )
        config = registry_config(cls, entry) if config is None else config
    fmt = detect_format(path)
    loaders = loaders_of(cls)
    loader = loaders.get(fmt)
    if loader is None:
        readable = sorted(loaders)
        raise ValueError(f"{path} is a {fmt!r} checkpoint; {cls.__name__} reads {readable}")
    return loader(cls, path, config, strict)


class FromPretrainedMixin:
    """``Model.from_pretrained(path, config=None, strict=True)`` for our models.

    A model class names its config dataclass (``config_class``, with ``from_dict``) and the loaders of
    the formats its family reads beyond :data:`COMMON_LOADERS` (``pretrained_loaders``), so that this
    module needs no import of the families.
    """

    config_class: ClassVar[type]
    pretrained_loaders: ClassVar[dict[str, Loader]]

    @classmethod
    def from_pretrained(cls, path: str | Path, config: Any = None, strict: bool = True):
        """Build the model and load ``path`` (Lightning, FSDP2, ours, transformers, salesforce, LAVIS)."""
        return from_pretrained(cls, path, config, strict)
