"""LightningModules: thin training glue over the models in :mod:`lightning_blip.models`."""

from lightning_blip.tasks.base import BlipTask
from lightning_blip.tasks.pretrain import MEDPretrain

__all__ = ["BlipTask", "MEDPretrain"]
