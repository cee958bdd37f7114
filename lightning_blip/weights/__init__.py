"""Weights in and out as state dicts: safe file readers (``checkpoint_io``, ``distributed`` for FSDP2
directories), one key table per format (``transformers_blip*``, ``salesforce_blip``, ``lavis_blip2``),
the loader that applies a table (``keymap``), released checkpoints by name (``registry``, ``download``)
and model cards (``model_card``). No Lightning here, and no import of :mod:`lightning_blip.models`: a
loader takes the model instance it fills. Building a model from a checkpoint (``Model.from_pretrained``)
is in :mod:`lightning_blip.models`. Modules are imported by name: importing this package imports none.
"""
