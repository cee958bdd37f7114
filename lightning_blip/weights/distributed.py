"""Reading FSDP2 distributed checkpoints (directories of shards) safely, and consolidating them.

torch's own reader unpickles the directory's ``.metadata`` and every non-tensor value without
restriction, so a crafted directory could run code. Here the metadata goes through an unpickler that
admits only the checkpoint-format classes, and values through ``torch.load(weights_only=True)``.
Lightning resumes from a directory with torch's reader: :func:`check_distributed_checkpoint` is
what our CLI runs on such a ``ckpt_path`` first.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from lightning_blip.weights.checkpoint_io import load_torch_file

METADATA_FILE = "meta.pt"  # what Lightning's ModelParallelStrategy writes beside the shards
_FORMAT_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


class _FormatUnpickler(pickle.Unpickler):
    """Admits the classes a DCP ``.metadata`` file is made of, and refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        found = None
        if module in _FORMAT_MODULES:
            found = getattr(__import__(module, fromlist=[name]), name, None)
            found = found if isinstance(found, type) and found.__module__ == module else None
        elif module == "torch":
            found = getattr(torch, name, None)
            found = found if found is torch.Size or isinstance(found, torch.dtype) else None
        elif (module, name) == ("torch.serialization", "_get_layout"):
            found = torch.serialization._get_layout  # a lookup of torch.strided & co by name
        elif module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            found = getattr(pathlib, name)
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not part of the checkpoint format")
        return found


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with path.open("rb") as f:
                metadata = _FormatUnpickler(f).load()
        except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path} is not a readable distributed-checkpoint metadata file, or needs arbitrary "
                f"unpickling, which is refused for safety: {err}"
            ) from err
        if not isinstance(metadata, Metadata):
            raise TypeError(f"{path} holds a {type(metadata).__name__}, not checkpoint metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(_EmptyStateDictLoadPlanner):
    def load_bytes(self, read_item: Any, value: Any) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"checkpoint value {read_item.dest_index.fqn!r} needs arbitrary unpickling, which is "
                f"refused for safety: {err}"
            ) from err
        if self.flatten_state_dict:  # where the base planner puts a value
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class _ValuesPlanner(_SafePlanner):
    """Plans the non-tensor values only: no tensor is allocated or read."""

    def _should_include_key(self, key: str, metadata: Metadata) -> bool:
        stored = metadata.state_dict_metadata[key]
        return isinstance(stored, BytesStorageMetadata) and super()._should_include_key(key, metadata)


def read_distributed_state_dict(checkpoint_dir: str | Path, keys: set[str] | None = None) -> dict[str, Any]:
    """The (nested) dict saved in a DCP directory, or only its top-level ``keys``; read safely."""
    return _read(checkpoint_dir, _SafePlanner(keys=keys))


def check_distributed_checkpoint(checkpoint_dir: str | Path) -> None:
    """Refuse a DCP directory that torch's reader could not load without arbitrary unpickling.

    Reads its ``.metadata``, every non-tensor value (optimiser settings, loop state) and Lightning's
    ``meta.pt`` as :func:`read_distributed_state_dict` does, but no tensor: cheap on every rank.
    Raises ``ValueError`` naming the file or key that needs arbitrary unpickling.
    """
    source = _distributed_checkpoint_dir(checkpoint_dir)
    _read(source, _ValuesPlanner())
    if (source / METADATA_FILE).is_file():
        load_torch_file(source / METADATA_FILE)


def _distributed_checkpoint_dir(path: str | Path) -> Path:
    source = Path(path)
    if not (source / ".metadata").is_file():
        raise ValueError(f"{source} is not a distributed checkpoint directory (no .metadata file)")
    return source


def _read(checkpoint_dir: str | Path, planner: _SafePlanner) -> dict[str, Any]:
    state: dict[str, Any] = {}
    reader = _SafeReader(checkpoint_dir)
    reader.read_metadata()  # raises here what the loader would wrap: a refused or unreadable file
    try:
        # the private loader, as torch's dcp_to_torch_save: the public one fills only keys already present
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    except CheckpointException as err:  # DCP wraps what the reader or the planner raised
        causes = [failure[0] for failure in err.failures.values()]
        refused = next((c for c in causes if isinstance(c, (ValueError, TypeError))), None)
        if refused is None:
            raise
        raise refused from None
    return state


def consolidate(checkpoint_dir: str | Path, output: str | Path) -> Path:
    """Merge the shards of ``checkpoint_dir`` and Lightning's metadata into one ``.ckpt`` file.

    The result loads with ``Module.load_from_checkpoint(output, weights_only=True)`` (or
    ``torch.load``). Weights only: the sharded optimiser state is not carried over (resume from
    the directory itself to continue training). Frozen weights that the module names in the
    checkpoint's ``frozen_weights`` are left out, as in single-file checkpoints. Written atomically.
    """
    source, output = _distributed_checkpoint_dir(checkpoint_dir), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    state_dict = read_distributed_state_dict(source, keys={"state_dict"})["state_dict"]
    checkpoint = load_torch_file(source / METADATA_FILE) if (source / METADATA_FILE).is_file() else {}
    frozen = tuple(checkpoint.get("frozen_weights", {}).get("prefixes", ()))
    checkpoint["state_dict"] = {k: v for k, v in state_dict.items() if not (frozen and k.startswith(frozen))}
    partial = output.with_name(output.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, output)
    return output
