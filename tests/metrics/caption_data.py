"""Generated captions for the caption-metric tests (nothing is downloaded)."""

from __future__ import annotations

import random

WORDS = [
    "a", "man", "woman", "dog", "cat", "riding", "wave", "on", "top", "of", "surfboard", "the", "table",
    "pizza", "with", "two", "people", "black", "white", "red", "sitting", "next", "to", "an",
    "umbrella", "street", "bus", "train", "kitchen", "is", "are", "in", "front", "it", "young", "boy",
    "girl", "tennis", "player"
]  # fmt: skip
SPECIAL = [
    "isn't", "don't", "it's", "they're", "can't", "won't", "we've", "he'll", "she'd", "I'm", "cannot",
    "gonna", "wanna", "black-and-white", "x-ray", "t-shirt", "2-year-old", "double-decker", "3", "3.5",
    "1,000", "5:30", "10%", "$5", "1/2", "-5", "1990s", "1st", "3d", "12-inch", "2.5%", "mr.", "dr.",
    "st.", "u.s.", "p.m.", "etc.", "a.m.", "vs.", "e.g.", "and/or", "o'clock", "ma'am", "y'all",
    "rock'n'roll", "#1", "4x4", "8.5x11", "3-1/2", "..."
]  # fmt: skip
DECORATIONS = [
    "{}'s", "{}s'", "({})", "[{}]", "{{{}}}", '"{}"', "'{}'", "``{}''", "\u201c{}\u201d", "{}\u2019s", "{},",
    "{};", "{}:", "{}.", "{}!", "{}?", "{}...", "{}?!", "{} --", "{} -", "{}--", "{}\u2014", "{}\u2026",
    "{} &", "#{}", "{}*", "{}-{}", "{}/{}",
]  # fmt: skip


def generated_captions(n: int, seed: int = 0) -> list[str]:
    """Captions from a small vocabulary with punctuation, brackets, quotes, clitics, hyphens, numbers."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(1, 14)):
            word = rng.choice(WORDS) if rng.random() < 0.75 else rng.choice(SPECIAL)
            if rng.random() < 0.3:
                word = rng.choice(DECORATIONS).format(word, rng.choice(WORDS))
            words.append(word.upper() if rng.random() < 0.05 else word)
        text = " ".join(words)
        text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
        captions.append(text + rng.choice([".", " .", "!", "?", "...", "", ""]))
    return captions


def caption_set(n_images: int, n_refs: int = 5, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Lowercase captions from the first 16 words with random lengths: ``n_images`` predictions
    (0-14 words) and ``n_images`` lists of ``n_refs`` references (1-14 words)."""
    rng = random.Random(seed)

    def caption(shortest: int) -> str:
        return " ".join(rng.choice(WORDS[:16]) for _ in range(rng.randint(shortest, 14)))

    preds = [caption(0) for _ in range(n_images)]
    refs = [[caption(1) for _ in range(n_refs)] for _ in range(n_images)]
    return preds, refs
