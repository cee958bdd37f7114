"""Plain ``nn.Module`` models (no Lightning import): usable on their own."""

from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.blip2 import Blip2Config, Blip2Model
from lightning_blip.models.blip2_llm import Blip2ForGeneration, Blip2LLMConfig
from lightning_blip.models.blip_pretraining import BlipForPretraining
from lightning_blip.models.blip_vqa import BlipVQA, QuestionStates
from lightning_blip.models.med import MEDConfig, MEDTextModel
from lightning_blip.models.qformer import QFormer, QFormerConfig
from lightning_blip.models.retrieval import RerankedScores, RetrievalMixin, rerank, score_pairs, topk_masks
from lightning_blip.models.tokenizer import build_tokenizer
from lightning_blip.models.vision import VisionConfig, VisionEncoder

__all__ = [
    "Blip2Config",
    "Blip2ForGeneration",
    "Blip2LLMConfig",
    "Blip2Model",
    "BlipConfig",
    "BlipForPretraining",
    "BlipModel",
    "BlipVQA",
    "MEDConfig",
    "MEDTextModel",
    "QFormer",
    "QFormerConfig",
    "QuestionStates",
    "RerankedScores",
    "RetrievalMixin",
    "VisionConfig",
    "VisionEncoder",
    "build_tokenizer",
    "rerank",
    "score_pairs",
    "topk_masks",
]
