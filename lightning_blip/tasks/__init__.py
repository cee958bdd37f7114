"""LightningModules: thin training glue over the models in :mod:`lightning_blip.models`."""

from lightning_blip.tasks.base import BlipTask
from lightning_blip.tasks.caption import CaptionFinetune
from lightning_blip.tasks.caption_eval import CaptionEval
from lightning_blip.tasks.pretrain import MEDPretrain
from lightning_blip.tasks.qformer_stage1 import QFormerStage1
from lightning_blip.tasks.qformer_stage2 import QFormerStage2
from lightning_blip.tasks.rerank_eval import RerankRetrievalEval
from lightning_blip.tasks.retrieval import QFormerRetrievalFinetune, RetrievalFinetune
from lightning_blip.tasks.vqa import VQAFinetune

__all__ = [
    "BlipTask",
    "CaptionEval",
    "CaptionFinetune",
    "MEDPretrain",
    "QFormerRetrievalFinetune",
    "QFormerStage1",
    "QFormerStage2",
    "RerankRetrievalEval",
    "RetrievalFinetune",
    "VQAFinetune",
]
