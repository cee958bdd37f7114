"""BLIP and BLIP-2 as PyTorch Lightning components."""

__version__ = "0.1.0"
