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

Which loader serves which (model class, format) pair is the table :data:`LOADERS`.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor, nn

from lightning_blip.models.checkpoint_io import load_state_dict_file, load_torch_file, unwrap_state_dict

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
    from lightning_blip.checkpoints import consolidate

    with tempfile.TemporaryDirectory() as tmp:
        merged = consolidate(path, Path(tmp) / "merged.ckpt")
        return load_torch_file(merged)


def _model_config(cls: type[nn.Module], values: dict) -> Any:
    """Our config dataclass of ``cls`` rebuilt from a plain dict (checkpoint hyper-parameters)."""
    return _config_class(cls).from_dict(values)


def _config_class(cls: type[nn.Module]) -> type:
    from lightning_blip.models.blip import BlipConfig
    from lightning_blip.models.blip2 import Blip2Config
    from lightning_blip.models.blip2_llm import Blip2LLMConfig

    name = cls.__name__
    if name in ("BlipModel", "BlipVQA"):
        return BlipConfig
    if name == "Blip2Model":
        return Blip2Config
    if name == "Blip2ForGeneration":
        return Blip2LLMConfig
    raise TypeError(f"from_pretrained does not know {name}")


def _strip_to(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Drop the task wrappers' key prefixes (``model.``, ``model.blip.``, ``model.blip2.``)."""
    own = model.state_dict().keys()
    for prefix in ("model.blip2.", "model.blip.", "model.", ""):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and any(k in own for k in stripped):
            return stripped
    return state


def load_own_state(
    model: nn.Module, state: dict[str, Tensor], frozen: tuple[str, ...], strict: bool, source: str
):
    """Load our own keys (task prefixes stripped); keys under ``frozen`` may be absent.

    Raises:
        KeyError: ``strict`` and keys are missing (beyond ``frozen``) or unexpected (named).
        ValueError: a shape differs (key and both shapes named).
    """
    from lightning_blip.weights.keymap import load_with_rules

    state = _strip_to(state, model)
    absent = tuple(re.escape(p) + ".*" for p in frozen)
    return load_with_rules(model, state, ((r"(.*)", r"\1"),), absent, strict=strict, source=source)


def _from_lightning(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    checkpoint = read_lightning_checkpoint(path)
    if config is None:
        values = checkpoint.get("hyper_parameters", {}).get("config")
        if values is None:
            raise ValueError(f"{path}: no model config in the checkpoint's hyper_parameters; pass config=")
        config = _model_config(cls, values)
    if hasattr(config, "stage1_checkpoint"):  # the checkpoint holds the trained Q-Former already
        config = replace(config, stage1_checkpoint=None)
    model = cls(config)
    frozen = tuple(checkpoint.get("frozen_weights", {}).get("prefixes", ()))
    frozen = tuple(p.removeprefix("model.").removeprefix("blip2.") for p in frozen)
    load_own_state(model, checkpoint["state_dict"], frozen, strict, str(path))
    return model


def _from_ours(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    if config is None:
        config = _model_config(cls, json.loads((path / "config.json").read_text()))
    model = cls(config)
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    load_own_state(model, load_state_dict_file(path / "model.safetensors"), frozen, strict, str(path))
    return model


def _from_ours_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    from lightning_blip.weights.transformers_blip2 import load_converted_blip2

    if config is not None:
        return _from_ours(cls, path, config, strict)
    held = "Blip2ForGeneration" if "llm" in json.loads((path / "config.json").read_text()) else "Blip2Model"
    if held != cls.__name__:
        raise ValueError(f"{path} holds a {held}, not a {cls.__name__}")
    return load_converted_blip2(path, strict)


def _from_transformers_blip(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    from lightning_blip.weights.convert import blip_config_from_transformers
    from lightning_blip.weights.transformers_blip import load_transformers_blip
    from lightning_blip.weights.transformers_blip_vqa import load_transformers_blip_vqa

    model = cls(config if config is not None else blip_config_from_transformers(path)[0])
    load = load_transformers_blip_vqa if cls.__name__ == "BlipVQA" else load_transformers_blip
    load(model, path, strict=strict)
    return model


def _from_transformers_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    from lightning_blip.weights.transformers_blip2 import (
        blip2_config_from_transformers,
        load_transformers_blip2,
    )

    # a Blip2ForConditionalGeneration's LLM is read from the same directory (its language_model.*),
    # when the model is built; the rest of the weights are then read without it
    model = cls(config if config is not None else blip2_config_from_transformers(path, llm=path)[0])
    llm = getattr(model.config, "llm", None)
    llm_loaded = llm is not None and Path(llm).resolve() == path.resolve()
    load_transformers_blip2(model, path, strict=strict, llm_loaded=llm_loaded)
    return model


def _from_salesforce(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    """``config``: our ``BlipConfig``, or ``"base"`` / ``"large"`` (BLIP's ViT-B/16, ViT-L/16; default base)."""
    from lightning_blip.weights.salesforce_blip import blip_config, load_salesforce_blip

    state = load_state_dict_file(path)  # read once: for the sizes and the weights
    if config is None or isinstance(config, str):
        config = blip_config(config or "base", state)
    model = cls(config)
    load_salesforce_blip(model, state, strict=strict)
    return model


def _from_lavis_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    from lightning_blip.weights.lavis_blip2 import lavis_blip2_model

    if config is None:
        raise ValueError(f"{path}: a LAVIS BLIP-2 file holds no config (sizes, LLM); pass config=")
    return lavis_blip2_model(cls, config, path, strict)[0]


Loader = Callable[[type[nn.Module], Path, Any, bool], nn.Module]

BLIP, BLIP2 = ("BlipModel", "BlipVQA"), ("Blip2Model", "Blip2ForGeneration")
LOADERS: dict[tuple[str, str], Loader] = {
    **{
        (name, fmt): _from_lightning
        for name in BLIP + BLIP2
        for fmt in ("lightning", "lightning-distributed")
    },
    **{(name, "ours"): _from_ours for name in BLIP},
    **{(name, "ours"): _from_ours_blip2 for name in BLIP2},
    **{(name, "transformers"): _from_transformers_blip for name in BLIP},
    **{(name, "transformers"): _from_transformers_blip2 for name in BLIP2},
    **{(name, "salesforce"): _from_salesforce for name in BLIP},
    **{(name, "lavis-blip2"): _from_lavis_blip2 for name in BLIP2},
}
"""(model class name, format) -> loader(cls, path, config, strict)."""


def from_pretrained(
    cls: type[nn.Module], path: str | Path, config: Any = None, strict: bool = True
) -> nn.Module:
    """Build ``cls`` and fill it from ``path`` of any format we read (see the module docstring).

    Args:
        cls: ``BlipModel``, ``BlipVQA``, ``Blip2Model`` or ``Blip2ForGeneration``.
        path: a checkpoint file or directory.
        config: our config for the model (default: the one the checkpoint carries; required for
            formats that carry none).
        strict: fail on missing (beyond the weights the format is known not to hold) or unexpected keys.
    """
    path = Path(path)
    fmt = detect_format(path)
    loader = LOADERS.get((cls.__name__, fmt))
    if loader is None:
        readable = sorted(f for name, f in LOADERS if name == cls.__name__)
        raise ValueError(f"{path} is a {fmt!r} checkpoint; {cls.__name__} reads {readable}")
    return loader(cls, path, config, strict)


class FromPretrainedMixin:
    """``Model.from_pretrained(path, config=None, strict=True)`` for our models."""

    @classmethod
    def from_pretrained(cls, path: str | Path, config: Any = None, strict: bool = True):
        """Build the model and load ``path`` (Lightning, FSDP2, ours, transformers, salesforce, LAVIS)."""
        return from_pretrained(cls, path, config, strict)
