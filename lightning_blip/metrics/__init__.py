"""Evaluation metrics."""

from lightning_blip.metrics.retrieval import recall_at_1

__all__ = ["recall_at_1"]
