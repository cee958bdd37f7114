"""COCO BLEU-1..4: corpus-level BLEU exactly as pycocoevalcap computes it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_blip.metrics.caption import CaptionMetric
from lightning_blip.metrics.caption_tokenizer import Backend
from lightning_blip.metrics.ngrams import ngram_counts

# The scorer's guards against empty counts; they move short-input scores, so parity needs them.
_TINY, _SMALL = 1e-15, 1e-9


def corpus_bleu(preds: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """BLEU-1..``n`` of ``N`` tokenised predictions against ``N`` lists of tokenised references.

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus; the reference
    length of each candidate is the "closest" one (ties go to the shorter), and the brevity penalty
    uses the summed lengths. Captions are space-separated token strings.
    """
    correct, guess = [0] * n, [0] * n
    pred_len = ref_len = 0
    for pred, references in zip(preds, refs):
        words = pred.split()
        max_ref: Counter[tuple[str, ...]] = Counter()
        ref_lengths = []
        for ref in references:
            ref_words = ref.split()
            ref_lengths.append(len(ref_words))
            max_ref |= ngram_counts(ref_words, n)  # union keeps the max count of each n-gram
        pred_len += len(words)
        ref_len += min(ref_lengths, key=lambda length: (abs(length - len(words)), length))
        for gram, count in ngram_counts(words, n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guess[k] += max(0, len(words) - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (pred_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


class COCOBLEUScore(CaptionMetric):
    """COCO BLEU-1..``n_gram`` (pycocoevalcap's ``Bleu``): ``compute()`` -> ``(n_gram,)`` float64.

    ``update(preds, target, ids=None)``: see :class:`~lightning_blip.metrics.caption.CaptionMetric`.
    """

    def __init__(self, n_gram: int = 4, tokenizer: Backend = "python", **kwargs) -> None:
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.n_gram = n_gram

    def _score(self, preds: list[str], refs: list[list[str]]) -> Tensor:
        return torch.tensor(corpus_bleu(preds, refs, self.n_gram), dtype=torch.float64)
