"""Reading weight files safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a flat ``{name: tensor}`` dict from a safetensors or torch file, never unpickling code.

    A Lightning checkpoint's ``state_dict`` and a salesforce/LAVIS ``{"model": ...}`` wrapper are
    unwrapped. A file that needs arbitrary unpickling is refused with a message that says so.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return load_file(str(path))
    obj = unwrap_state_dict(load_torch_file(path))
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def load_torch_file(path: str | Path, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that needs more is refused by name.

    ``mmap``: map the file instead of reading it (to look at a large checkpoint's keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} needs arbitrary unpickling to load, which is refused for safety "
            f"(torch.load(weights_only=True) failed: {err}). Re-save it as safetensors or as a plain "
            "state dict of tensors."
        ) from err


def unwrap_state_dict(obj: object) -> object:
    """The state dict inside a Lightning checkpoint (``state_dict``) or a salesforce/LAVIS file
    (``model``, ``module``); anything else unchanged."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj
