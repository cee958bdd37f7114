"""Caption and question pre-processing (BLIP's ``pre_caption`` and ``pre_question``)."""

from __future__ import annotations

import re

# BLIP replaces these with spaces; commas, apostrophes, '?' and '-' stay.
_PUNCTUATION = re.compile(r'[.!"()*#:;~]')


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lowercase, blank out BLIP's punctuation, collapse whitespace and keep the first ``max_words`` words."""
    words = _PUNCTUATION.sub(" ", caption.lower()).split()
    return " ".join(words[:max_words])


# BLIP's ``pre_question`` deletes these (``pre_caption`` blanks them); '?' and ',' stay.
_QUESTION_PUNCTUATION = re.compile(r'[.!"()*#:;~]')


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question pre-processing: lowercase, delete its punctuation, strip trailing spaces, keep
    the first ``max_words`` space-separated words."""
    question = _QUESTION_PUNCTUATION.sub("", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question
