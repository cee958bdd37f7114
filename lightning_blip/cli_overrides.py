"""Command-line model settings that survive ``--ckpt_path``.

Given ``--ckpt_path=<file>``, LightningCLI parses the checkpoint's ``hyper_parameters`` over the whole
model config, so ``--model.init_args.generate_kwargs=...`` and every other model option given on the
command line would be silently replaced. The order here: recipe and ``-c`` files < the checkpoint's
hyper-parameters < ``--model.<field>`` options of the command line. A command-line value that changes
the architecture fails before the trainer reads the checkpoint, naming the setting, both values and a
tensor whose shape it changes (:func:`check_checkpoint_fits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from torch import nn

from lightning_blip.weights.checkpoint_io import load_torch_file

_CONTAINER_KEYS = ("init_args", "dict_kwargs")


def command_line_model_keys(args: list[str], subcommand: str) -> list[str]:
    """Config keys of the ``--model.<field>`` options in ``args`` (``--model.x`` is short for
    ``--model.init_args.x``), prefixed by ``subcommand``; ``--model`` and its ``class_path`` are left out
    (the class comes from the checkpoint)."""
    keys = []
    for arg in args:
        if not arg.startswith("--model."):
            continue
        field = arg[len("--model.") :].split("=", 1)[0]
        if field == "class_path":
            continue
        if not field.startswith(_CONTAINER_KEYS):
            field = f"init_args.{field}"
        keys.append(f"{subcommand}.model.{field}")
    return keys


def _present(config: Namespace, key: str) -> str:
    """``key`` or its longest prefix held by ``config`` (``generate_kwargs.num_beams`` is stored as part
    of the dict ``generate_kwargs``)."""
    while key not in config and "." in key:
        key = key.rsplit(".", 1)[0]
    return key


def reapply(config: Namespace, given: Namespace, keys: list[str]) -> dict[str, tuple[Any, Any]]:
    """Set each of ``keys`` in ``config`` (the checkpoint's settings) back to its value in ``given``
    (the command line's); return ``{key: (command-line value, checkpoint value)}`` of those that differ."""
    changed = {}
    for key in dict.fromkeys(_present(given, k) for k in keys):
        ours, theirs = given.get(key), config.get(key) if key in config else None
        if ours != theirs:
            changed[key] = (ours, theirs)
        config[key] = ours
    return changed


def _describe(changed: dict[str, tuple[Any, Any]]) -> str:
    parts = (f"--{k.split('.', 1)[1]}={a!r} (the checkpoint's: {b!r})" for k, (a, b) in changed.items())
    return ", ".join(parts)


def check_checkpoint_fits(
    model: nn.Module, ckpt_path: str | Path, changed: dict[str, tuple[Any, Any]]
) -> None:
    """Raise ``ValueError`` if ``model``'s tensors differ in shape from the checkpoint's ``state_dict``,
    naming the first such key, both shapes and the command-line settings that differ from the checkpoint."""
    checkpoint = load_torch_file(ckpt_path, mmap=True)
    theirs = checkpoint.get("state_dict", {})
    for key, value in model.state_dict().items():
        if key in theirs and theirs[key].shape != value.shape:
            architecture = {k: v for k, v in changed.items() if ".model.init_args.config." in k} or changed
            cause = f"{_describe(architecture)} cannot apply to" if changed else "the model does not fit"
            raise ValueError(
                f"{cause} --ckpt_path={ckpt_path}: {key} has shape {tuple(theirs[key].shape)} in the "
                f"checkpoint, {tuple(value.shape)} in the model"
            )
