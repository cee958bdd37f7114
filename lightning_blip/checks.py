"""Settings checked when they are given, so that a bad value fails at once, naming its field."""

from __future__ import annotations

from typing import Any


def check_config(field: str, ok: bool, rule: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``ok`` (``rule`` says what it must be)."""
    if not ok:
        raise ValueError(f"{field} must be {rule}, got {value!r}")
