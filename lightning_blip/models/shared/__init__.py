"""What both model families use: the vision encoder, the BLIP tokenizer, decoding, retrieval scoring
and ``from_pretrained``. Nothing here imports a family (:mod:`~lightning_blip.models.blip`,
:mod:`~lightning_blip.models.blip2`)."""
