"""Files of the registry's entries: found in a local cache, downloaded when the network allows.

- URLs go to ``cache_dir()`` (``$LIGHTNING_BLIP_CACHE``, else ``$XDG_CACHE_HOME/lightning_blip``,
  else ``~/.cache/lightning_blip``) through torch's ``download_url_to_file``: a temporary file beside
  the target, renamed when complete, checked against the entry's checksum prefix and the size the
  server announced. A failed or refused download leaves nothing behind.
- Hub ids go through ``huggingface_hub.snapshot_download`` into the transformers hub cache
  (``HF_HUB_CACHE`` / ``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only that cache is read.
- Offline (``LIGHTNING_BLIP_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), or when the network fails, a file
  that is not in the cache fails at once with :class:`PretrainedNotFound`, naming the file, where to
  get it and the folder to put it in.
"""

from __future__ import annotations

import difflib
import os
import urllib.error
import urllib.request
from pathlib import Path

from lightning_blip.weights.registry import Pretrained, get_pretrained, is_registered, list_pretrained

TIMEOUT_S = 10  # the announced-size request: an unreachable network fails quickly
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "flax_model*", "tf_model*", "rust_model*"]  # not read here


class PretrainedNotFound(FileNotFoundError):
    """A registered file that is neither in the cache nor downloadable now."""


def cache_dir() -> Path:
    """Where downloaded URLs are kept."""
    if os.environ.get("LIGHTNING_BLIP_CACHE"):
        return Path(os.environ["LIGHTNING_BLIP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lightning_blip"


def offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("LIGHTNING_BLIP_OFFLINE", "HF_HUB_OFFLINE")
    )


def resolve_pretrained(name_or_path: str | Path) -> tuple[Path, Pretrained | None]:
    """``(local path, entry)``: a registered name's file (cached, else downloaded), or a path as given
    (entry None) when ``name_or_path`` is not a registered name.

    Raises:
        PretrainedNotFound: a registered file that is not cached and cannot be downloaded now, or a
            name that is neither a path nor registered but close to a registered one (suggested).
        ValueError: the download's checksum or size is not the expected one (nothing is kept).
    """
    name = str(name_or_path)
    if Path(name).exists():
        return Path(name), None
    if not is_registered(name):
        close = difflib.get_close_matches(name, [p.name for p in list_pretrained()], n=3)
        if close:
            raise PretrainedNotFound(
                f"no file or folder at {name}, and no released checkpoint of that name; did you mean "
                f"{', '.join(repr(c) for c in close)}? (lightning_blip list-pretrained)"
            )
        return Path(name), None
    entry = get_pretrained(name)
    return (_url_file(entry) if entry.is_url else _hub_snapshot(entry)), entry


def _missing(entry: Pretrained, where: Path | str, why: str) -> PretrainedNotFound:
    return PretrainedNotFound(
        f"{entry.name}: {entry.filename} is not in {where} and cannot be downloaded now ({why}). "
        f"Get it from {entry.source} and put it in {where}, or pass its local path instead of the name."
    )


def _url_file(entry: Pretrained) -> Path:
    target = cache_dir() / entry.filename
    if target.is_file():
        return target
    if offline():
        raise _missing(entry, target.parent, "offline: LIGHTNING_BLIP_OFFLINE or HF_HUB_OFFLINE is set")
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = _announced_size(entry.source)
        torch.hub.download_url_to_file(entry.source, str(target), hash_prefix=entry.sha256, progress=True)
    except RuntimeError as err:  # torch's checksum refusal; its temporary file is already removed
        raise ValueError(
            f"{entry.name}: {entry.source} does not match its checksum {entry.sha256}: {err}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise _missing(entry, target.parent, f"{type(err).__name__}: {err}") from err
    if size is not None and target.stat().st_size != size:
        got = target.stat().st_size
        target.unlink()
        raise ValueError(
            f"{entry.name}: {entry.source} arrived incomplete ({got} of {size} bytes); nothing kept"
        )
    return target


def _announced_size(url: str) -> int | None:
    """The Content-Length the server gives for ``url`` (None if it gives none)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "lightning_blip"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
    return int(length) if length else None


def _hub_snapshot(entry: Pretrained) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = (
        os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    )  # read now: tests and users may set it late
    try:
        folder = snapshot_download(
            entry.source, cache_dir=cache, local_files_only=offline(), ignore_patterns=OTHER_FRAMEWORKS
        )
    except (LocalEntryNotFoundError, OSError) as err:
        why = "offline: HF_HUB_OFFLINE or LIGHTNING_BLIP_OFFLINE is set" if offline() else type(err).__name__
        raise _missing(entry, cache, why) from err
    return Path(folder)
