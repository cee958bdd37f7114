"""Weights into other formats and the ``lightning_blip convert`` command: exports to transformers
(``export_blip``, ``export_blip2``, their processor files in ``processor``), BLIP-2 in our own
directory format (``ours_blip2``) and the command (``command``). Above the models: these build them."""
