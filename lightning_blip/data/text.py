"""Caption pre-processing (BLIP's ``pre_caption``)."""

from __future__ import annotations

import re

# BLIP replaces these with spaces; commas, apostrophes, '?' and '-' stay.
_PUNCTUATION = re.compile(r'[.!"()*#:;~]')


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lowercase, blank out BLIP's punctuation, collapse whitespace and keep the first ``max_words`` words."""
    words = _PUNCTUATION.sub(" ", caption.lower()).split()
    return " ".join(words[:max_words])
