"""Reading weight files safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor


def load_state_dict_file(path: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """Load a flat ``{name: tensor}`` dict from a safetensors or torch file, never unpickling code.

    A Lightning checkpoint's ``state_dict`` and a salesforce/LAVIS ``{"model": ...}`` wrapper are
    unwrapped. A file that needs arbitrary unpickling is refused with a message that says so.
    ``keep``: only the names it accepts (a safetensors file then reads only those tensors).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if keep is None:
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:
            names = [name for name in f.keys() if keep(name)]  # noqa: SIM118 (not iterable)
            return {name: f.get_tensor(name) for name in names}
    obj = unwrap_state_dict(load_torch_file(path))
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj if keep is None else {name: t for name, t in obj.items() if keep(name)}


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
        # torch's message spans lines of advice; the one naming what it refused is enough here
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise ValueError(
            f"{path} needs arbitrary unpickling to load, which is refused for safety "
            f"(torch.load(weights_only=True): {reason.split('. Please use')[0]}); re-save it as safetensors "
            "or as a plain state dict of tensors"
        ) from err
    except Exception as err:  # empty, truncated or not a torch file at all: torch raises many kinds
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err})") from err


def unwrap_state_dict(obj: object) -> object:
    """The state dict inside a Lightning checkpoint (``state_dict``) or a salesforce/LAVIS file
    (``model``, ``module``); anything else unchanged."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj
