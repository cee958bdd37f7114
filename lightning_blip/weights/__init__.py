"""Weights in and out: key tables per format and the loaders that apply them (no Lightning here).

One module per job, imported by name (``lightning_blip.weights.keymap``, ``.pretrained``, ``.registry``
...): importing this package imports none of them, so ``list-pretrained`` stays cheap.
"""
