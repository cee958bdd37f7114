"""Evaluation metrics: COCO caption scores, VQA v2 accuracy, retrieval hit rates (all DDP-aware)."""

from lightning_blip.metrics.bleu import COCOBLEUScore, corpus_bleu
from lightning_blip.metrics.caption import CaptionMetric
from lightning_blip.metrics.caption_tokenizer import java_available, ptb_tokenize, tokenize_captions
from lightning_blip.metrics.cider import CIDErScore, cider_d
from lightning_blip.metrics.retrieval import RetrievalRecall, recall_at_1, retrieval_recall
from lightning_blip.metrics.rouge import COCOROUGELScore, rouge_l
from lightning_blip.metrics.vqa import VQAAccuracy, normalize_answer, vqa_accuracy

__all__ = [
    "CIDErScore",
    "COCOBLEUScore",
    "COCOROUGELScore",
    "CaptionMetric",
    "RetrievalRecall",
    "VQAAccuracy",
    "cider_d",
    "corpus_bleu",
    "java_available",
    "normalize_answer",
    "ptb_tokenize",
    "recall_at_1",
    "retrieval_recall",
    "rouge_l",
    "tokenize_captions",
    "vqa_accuracy",
]
