"""Callbacks: momentum-encoder EMA, hard-negative mining, prediction writing."""

from lightning_blip.callbacks.hard_negatives import HardNegativeMining
from lightning_blip.callbacks.momentum import MomentumEncoder
from lightning_blip.callbacks.prediction_writer import PredictionWriter

__all__ = ["HardNegativeMining", "MomentumEncoder", "PredictionWriter"]
