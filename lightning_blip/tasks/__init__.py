"""LightningModules: thin training glue over the models in :mod:`lightning_blip.models`."""

from lightning_blip.tasks.base import BlipTask
from lightning_blip.tasks.pretrain import MEDPretrain
from lightning_blip.tasks.qformer_stage1 import QFormerStage1
from lightning_blip.tasks.qformer_stage2 import QFormerStage2

__all__ = ["BlipTask", "MEDPretrain", "QFormerStage1", "QFormerStage2"]
