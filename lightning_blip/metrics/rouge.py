"""COCO ROUGE-L: LCS F-measure with beta 1.2, as pycocoevalcap computes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_blip.metrics.caption import CaptionMetric
from lightning_blip.metrics.caption_tokenizer import Backend


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(pred: str, refs: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L of one tokenised prediction against its tokenised references.

    As in the COCO scorer, precision (LCS / prediction length) and recall (LCS / reference length)
    are each maximised over the references, then combined as
    ``(1 + beta^2) P R / (R + beta^2 P)``. Tokens are split on single spaces, so an empty caption
    is one empty token (an empty prediction matches an empty reference).
    """
    cand = pred.split(" ")
    precision = recall = 0.0
    for ref in refs:
        ref_tokens = ref.split(" ")
        lcs = lcs_length(cand, ref_tokens)
        precision = max(precision, lcs / len(cand))
        recall = max(recall, lcs / len(ref_tokens))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


class COCOROUGELScore(CaptionMetric):
    """COCO ROUGE-L (pycocoevalcap's ``Rouge``): the mean over images; ``compute()`` -> float64 scalar.

    ``update(preds, target, ids=None)``: see :class:`~lightning_blip.metrics.caption.CaptionMetric`.
    """

    def __init__(self, beta: float = 1.2, tokenizer: Backend = "python", **kwargs) -> None:
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.beta = beta

    def _score(self, preds: list[str], refs: list[list[str]]) -> Tensor:
        scores = [rouge_l(p, r, self.beta) for p, r in zip(preds, refs)]
        return torch.tensor(sum(scores) / len(scores), dtype=torch.float64)
