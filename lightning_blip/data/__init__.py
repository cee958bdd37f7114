"""Image-text data: annotations, transforms, datasets, collation, resumable sampling, DataModules.

One job per module: ``text`` (pre_caption), ``annotations`` (LAVIS-style files), ``transforms``,
``dataset``, ``collate``, ``sampler`` (resumable distributed sampler), ``datamodule``,
``easy_vqa`` (the offline quickstart data), ``caption`` (COCO Karpathy captioning splits),
``retrieval`` (COCO / Flickr30k retrieval splits), ``vqa`` (VQAv2 / BLIP VQA files).
"""

from lightning_blip.data.caption import CaptionDataModule, CaptionEvalDataset
from lightning_blip.data.datamodule import EasyVQACaptionDataModule, ImageTextDataModule
from lightning_blip.data.retrieval import RetrievalCollator, RetrievalDataModule, RetrievalEvalDataset
from lightning_blip.data.vqa import EasyVQADataModule, VQACollator, VQADataModule, VQADataset

__all__ = [
    "CaptionDataModule",
    "CaptionEvalDataset",
    "EasyVQACaptionDataModule",
    "EasyVQADataModule",
    "ImageTextDataModule",
    "RetrievalCollator",
    "RetrievalDataModule",
    "RetrievalEvalDataset",
    "VQACollator",
    "VQADataModule",
    "VQADataset",
]
