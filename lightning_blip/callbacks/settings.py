"""Callback settings restored from a checkpoint: a resumed run keeps its own, and says so."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn


def warn_replaced_settings(callback: str, configured: dict[str, Any], restored: dict[str, Any]) -> None:
    """Warn, naming each setting, when the checkpoint's ``restored`` values replace ``configured`` ones."""
    changed = {k: (configured[k], v) for k, v in restored.items() if k in configured and configured[k] != v}
    if changed:
        described = ", ".join(f"{k}={new!r} (configured {old!r})" for k, (old, new) in changed.items())
        rank_zero_warn(
            f"{callback}: resuming keeps the checkpoint's settings {described}; start a new run "
            "(or load only the weights) to change them"
        )
