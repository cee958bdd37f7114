"""CIDEr-D as pycocoevalcap's ``Cider`` computes it (the COCO leaderboard's "CIDEr")."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_blip.metrics.caption import CaptionMetric
from lightning_blip.metrics.caption_tokenizer import Backend
from lightning_blip.metrics.ngrams import ngram_counts

_Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def cider_d(
    preds: Sequence[str], refs: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """Per-image CIDEr-D of ``N`` tokenised predictions against ``N`` lists of references.

    Each caption is a tf-idf vector per n-gram order 1..``n`` (raw counts times ``log(N / df)``, the
    document frequency ``df`` counted over the references of the whole set, at least 1). Per order,
    the similarity to a reference is ``sum_g min(c_g, r_g) r_g / (|c| |r|)`` (candidate weights
    clipped by the reference's), times ``exp(-delta^2 / (2 sigma^2))`` where ``delta`` is the length
    difference; the score averages over orders and references, times 10. As in the reference code,
    the length is the number of bigrams (``max(0, words - 1)``). Needs the whole evaluated set.
    """
    pred_counts = [ngram_counts(p.split(), n) for p in preds]
    ref_counts = [[ngram_counts(r.split(), n) for r in rs] for rs in refs]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        doc_freq.update(set().union(*counts))
    log_images = math.log(len(refs))

    def vector(counts: Counter[tuple[str, ...]]) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        for gram, count in counts.items():
            weights[len(gram) - 1][gram] = count * (log_images - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        bigrams = sum(count for gram, count in counts.items() if len(gram) == 2)
        return weights, norms, bigrams

    scores = []
    for counts, references in zip(pred_counts, ref_counts):
        weights, norms, length = vector(counts)
        total = 0.0
        for ref in references:
            ref_weights, ref_norms, ref_length = vector(ref)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            for k in range(n):
                sim = sum(
                    min(w, ref_weights[k].get(g, 0.0)) * ref_weights[k].get(g, 0.0)
                    for g, w in weights[k].items()
                )
                if norms[k] != 0 and ref_norms[k] != 0:
                    sim /= norms[k] * ref_norms[k]
                total += sim * penalty
        scores.append(10.0 * total / (n * len(references)))
    return scores


class CIDErScore(CaptionMetric):
    """CIDEr-D (pycocoevalcap's ``Cider``): the mean over images; ``compute()`` -> float64 scalar.

    The document frequency comes from the references of every image gathered from every rank, so
    the value equals one pass over the whole (deduplicated) set. ``update(preds, target, ids=None)``:
    see :class:`~lightning_blip.metrics.caption.CaptionMetric`.
    """

    def __init__(self, n_gram: int = 4, sigma: float = 6.0, tokenizer: Backend = "python", **kwargs) -> None:
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.n_gram = n_gram
        self.sigma = sigma

    def _score(self, preds: list[str], refs: list[list[str]]) -> Tensor:
        scores = cider_d(preds, refs, self.n_gram, self.sigma)
        return torch.tensor(sum(scores) / len(scores), dtype=torch.float64)
