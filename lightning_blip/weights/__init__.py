"""Weights in and out as state dicts: safe file readers (``checkpoint_io``, ``distributed`` for FSDP2
directories), one key table per format (``transformers_blip*``, ``salesforce_blip``, ``lavis_blip2``)
and the loader that applies a table (``keymap``). No Lightning here, and no import of
:mod:`lightning_blip.models`: a loader takes the model instance it fills. Building a model from a
checkpoint (``Model.from_pretrained``) is in :mod:`lightning_blip.models`."""

from lightning_blip.weights.keymap import LoadReport, load_with_rules
from lightning_blip.weights.transformers_blip import load_transformers_blip

__all__ = ["LoadReport", "load_transformers_blip", "load_with_rules"]
