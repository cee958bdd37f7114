"""Image-text data: annotations, transforms, datasets, collation, resumable sampling, DataModules.

One job per module: ``text`` (pre_caption), ``annotations`` (LAVIS-style files), ``transforms``,
``dataset``, ``collate``, ``sampler`` (resumable distributed sampler), ``datamodule``,
``easy_vqa`` (the offline quickstart data).
"""

from lightning_blip.data.datamodule import EasyVQACaptionDataModule, ImageTextDataModule

__all__ = ["EasyVQACaptionDataModule", "ImageTextDataModule"]
