"""Where the checkout's recipes are, so that the commands find them from any working folder."""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
"""``recipes/`` of the checkout this package is installed from (``pip install -e .``)."""
