"""Callbacks: momentum-encoder EMA and hard-negative mining."""

from lightning_blip.callbacks.hard_negatives import HardNegativeMining
from lightning_blip.callbacks.momentum import MomentumEncoder

__all__ = ["HardNegativeMining", "MomentumEncoder"]
