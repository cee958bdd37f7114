"""Plain ``nn.Module`` models (no Lightning import): usable on their own.

``shared/`` holds what both families use (vision encoder, tokenizer, decoding, retrieval scoring,
``from_pretrained``), ``blip/`` the BLIP family (MED, ``BlipModel``, pretraining, VQA) and ``blip2/``
the BLIP-2 family (Q-Former, ``Blip2Model``, ``Blip2ForGeneration``, pretraining). The names here are
those of the families' ``__init__``.
"""

from lightning_blip.models.blip import (
    BlipConfig,
    BlipForPretraining,
    BlipModel,
    BlipVQA,
    MEDConfig,
    MEDTextModel,
    QuestionStates,
)
from lightning_blip.models.blip2 import (
    Blip2Config,
    Blip2ForGeneration,
    Blip2ForPretraining,
    Blip2LLMConfig,
    Blip2Model,
    QFormer,
    QFormerConfig,
)
from lightning_blip.models.shared.retrieval import (
    RerankedScores,
    RetrievalMixin,
    rerank,
    score_pairs,
    topk_masks,
)
from lightning_blip.models.shared.tokenizer import build_tokenizer
from lightning_blip.models.shared.vision import VisionConfig, VisionEncoder

__all__ = [
    "Blip2Config",
    "Blip2ForGeneration",
    "Blip2ForPretraining",
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
