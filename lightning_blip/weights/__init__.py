"""Weights in and out: key tables per format and the loaders that apply them (no Lightning here)."""

from lightning_blip.weights.keymap import LoadReport, load_with_rules
from lightning_blip.weights.pretrained import detect_format, from_pretrained
from lightning_blip.weights.transformers_blip import load_transformers_blip

__all__ = ["LoadReport", "detect_format", "from_pretrained", "load_transformers_blip", "load_with_rules"]
