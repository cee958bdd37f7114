"""Output heads shared by the BLIP MED text model and the BLIP-2 Q-Former."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then a decoder tied to the word embeddings."""

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        vocab_size, hidden_size = word_embeddings.weight.shape
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.decoder.weight = word_embeddings.weight
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(..., D)`` -> logits ``(..., V)``."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))
