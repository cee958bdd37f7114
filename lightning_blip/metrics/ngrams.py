"""n-gram counts of a tokenised caption, shared by BLEU and CIDEr-D."""

from __future__ import annotations

from collections import Counter


def ngram_counts(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of every 1..``n``-gram of ``tokens`` (keys are token tuples)."""
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))
