"""BERT's weight initialisation, shared by the MED text model and the Q-Former."""

from __future__ import annotations

from torch import nn


def bert_init_(module: nn.Module, std: float = 0.02) -> None:
    """In place: Linear/Embedding weights normal(0, ``std``), biases 0, LayerNorms 1 and 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
