"""What both model families use: the vision encoder, the BLIP tokenizer, decoding, retrieval scoring
and ``from_pretrained``. Nothing here imports a family (:mod:`~lightning_blip.models.blip`,
:mod:`~lightning_blip.models.blip2`)."""

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
    "RerankedScores",
    "RetrievalMixin",
    "VisionConfig",
    "VisionEncoder",
    "build_tokenizer",
    "rerank",
    "score_pairs",
    "topk_masks",
]
