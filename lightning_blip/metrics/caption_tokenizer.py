"""PTB-style caption tokenisation as in the COCO caption evaluation (pycocoevalcap).

The official pipeline runs Stanford CoreNLP 3.4.1's ``PTBTokenizer`` (``-preserveLines -lowerCase``)
on every caption, then drops the punctuation tokens in :data:`DROPPED_TOKENS`. ``backend="java"`` runs
exactly that (through pycocoevalcap, needs Java); ``backend="python"`` is a pure-Python longest-match
re-implementation of the lexer rules that captions use, written from the tokenizer's observed output.

Where the Python tokenizer may differ from the Java one: URLs and e-mail addresses, SGML/XML tags
(``<b>``), emoticons (``:-)``), emoji and other characters outside the Basic Multilingual Plane (the
jar drops them), abbreviations outside the lists below, currency signs other than $ £ €, letters or
digits whose class or lowercase differ between Java and Python, CP1252 control characters, ``&``
between capitals outside ASCII, and an abbreviation ending a caption ("plan A.", "fig."): the jar
reads all captions as one text, so it splits a one-letter abbreviation's period when the next caption
starts with "The", "A", "But"..., and keeps "No."/"fig." when the next caption starts with a digit. On
thousands of generated captions with punctuation, brackets, quotes, clitics, hyphens, numbers and
abbreviations, the tokens are identical (``tests/metrics/test_caption_tokenizer.py``). A mismatch
changes only the affected caption's tokens.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from typing import Literal

#: Tokens removed after tokenisation, as in pycocoevalcap. Tokens are lowercased first, so the
#: upper-case bracket names never match: brackets are kept as ``-lrb-`` and the like.
DROPPED_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

Backend = Literal["python", "java"]

# Characters the lexer normalises before splitting: curly quotes, dashes, ellipsis, currency.
_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": " -- ",
        "\u2014": " -- ",
        "\u2015": " -- ",
        "\u2026": " ... ",
        "\u00a3": "#",
        "\u20ac": "$",
    }
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

_AL = r"[^\W_]"  # a letter or digit
_LETTER = r"[^\W\d_]"
_END = r"(?![^\W_])"  # not followed by a letter or digit
_PREFIX = rf"(?:[dDoOlL]'{_AL})"  # d'Avignon, o'clock
_THING = rf"{_PREFIX}?{_AL}+(?:-{_PREFIX}?{_AL}+)*"  # 2-year-old
_WORD = rf"{_LETTER}{_AL}*(?:[.!?]{_LETTER}{_AL}*)*"

# Abbreviations kept with their period (caseless, as in the lexer; a capital in brackets must match).
_TITLES = (
    r"mrs?|ms|[M]iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|"
    r"capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mme|mlle|vs|alex|wm|jos|cie|cf|treas"
)
_ABBREV1 = (
    r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri|"
    r"ala|ariz|[A]z|[A]rk|calif|colo|conn|ct|dak|[D]el|fla|ga|[I]ll|ind|kans?|ky|[L]a|[M]ass|"
    r"md|mich|minn|mo|mont|neb|nev|okla|[O]re|[P]a|penn|tenn|[T]ex|va|vt|[W]ash|wisc?|wyo|"
    r"inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys|"
    r"jr|sr|bros|blvd|rd|esq|tel|est|ext|sq|ft|etc|al|seq|bldg"
)
_ABBREV3 = r"ca|figs?|prop|nos?|art|pp|op"  # kept only before a number
# Words after which a one-letter abbreviation ends a sentence ("Plan A. The ...").
_SENTENCE_START = (
    r"[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|"
    r"[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|"
    r"[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|"
    r"[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou"
)


def _alternation(words: str) -> str:
    """``a|[B]c`` -> a caseless alternation where a bracketed capital stays case-sensitive."""
    parts = []
    for word in words.split("|"):
        if word.startswith("["):
            parts.append(f"{word[1]}(?i:{word[3:]})")
        else:
            parts.append(f"(?i:{word})")
    return "|".join(parts)


# (pattern, kind). At each position the longest match wins (a trailing context after the ``tok``
# group counts towards the length, as in JFlex), ties go to the earlier rule; ``tok`` (or the whole
# match) is the token. Kinds: "word" is emitted lowercased, "bracket" mapped, "frac" keeps an inner
# space as a no-break space, "drop" is punctuation the COCO pipeline removes.
_RULES: list[tuple[str, str]] = [
    *(
        (rf"(?P<tok>(?i:{head})){tail}{_END}", "word")
        for head, tail in [("can", "(?i:not)"), ("gon", "(?i:na)"), ("got", "(?i:ta)"), ("wan", "(?i:na)")]
        + [("lem", "(?i:me)"), ("gim", "(?i:me)"), ("'t", "(?i:is|was)")]
    ),
    (r"(?P<tok>[A-Za-z]*[A-MO-Za-mo-z])[nN]['`][tT]", "word"),  # is|n't, ca|n't, do|n`t
    (rf"[nN]['`][tT]{_END}", "word"),
    (rf"(?P<tok>{_THING}|{_WORD})'(?i:s|m|d|re|ve|ll){_END}", "word"),  # it|'s, they|'ve
    (rf"'(?i:s|m|d|re|ve|ll){_END}", "word"),
    (rf"'[nN]'|'(?i:em|cause){_END}|[lLdDjJ]'|'[2-9]0s|'\d\d(?=\s|$)|[A-HJ-XZn]'{_LETTER}{{2,}}", "word"),
    (rf"{_LETTER}+[aeiouyAEIOUY]'[aeiouA-Z]{_LETTER}*", "word"),  # ma'am, Shi'ite
    (rf"(?i:c'mon|ol'){_END}", "word"),  # c'mon, good ol' days
    (r"[A-Z]+(?:&[A-Z]+)+", "word"),  # AT&T, B&W (capitals only: r&b, Rock&Roll are split)
    (rf"(?P<tok>[yY]'){_LETTER}", "word"),  # y'all -> y' all
    (r"[A-Za-z](?:\.[A-Za-z])+\.?", "word"),  # u.s., p.m
    # an initial keeps its period unless a sentence starts after it
    (rf"[A-Za-z]\.(?!\s+(?:{_alternation(_SENTENCE_START)})(?!\S))", "word"),
    (rf"(?:{_alternation(_TITLES)})\.", "word"),
    (rf"(?P<tok>(?:{_alternation(_ABBREV1)})\.)(?s:..)?", "word"),  # any 2 chars count: etc.a -> etc. a
    (rf"(?P<tok>(?:{_alternation(_ABBREV3)})\.)\s?\d", "word"),
    (r"(?:\d{1,4}[- \u00a0])?\d{1,4}/\d{1,4}", "frac"),
    (r"[-+]?(?:\d*(?:[.:,]\d+)+|\d+)", "word"),  # -5, 3.5, 1,000, 5:30, .5
    (_THING, "word"),
    (rf"{_AL}(?:{_AL}|[.,])*(?:-{_AL}+)+", "word"),  # 3.5-inch, u.s.-made
    (_WORD, "word"),
    (rf"{_AL}+(?:-{_LETTER}+){{0,2}}(?:\\?/{_AL}+(?:-{_LETTER}+){{0,2}}){{1,2}}", "word"),  # and/or
    (rf"@[A-Za-z_]\w*|#{_LETTER}{_AL}*", "word"),
    (r"[?!]+", "word"),  # "?!" and "!!" are kept, lone "?" and "!" dropped
    (r"\.\.\.|-{2,}", "drop"),
    (r"#+|@+|_+|\*+", "word"),
    (r"[(){}\[\]]", "bracket"),
    (r"[\"`']+", "drop"),
    (r"\S", "word"),
]
_COMPILED = [(re.compile(pattern), kind) for pattern, kind in _RULES]
_SPACE = re.compile(r"\s+")


def _tokens(caption: str) -> list[str]:
    """Lowercased PTB tokens of one caption (quotes, dashes and ellipses already left out)."""
    text = caption.translate(_TRANSLATE) + "\n"  # the jar reads each caption as a line
    tokens, pos = [], 0
    while True:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
        if pos >= len(text):
            return tokens
        best, best_len, best_kind = None, 0, ""
        for pattern, kind in _COMPILED:
            match = pattern.match(text, pos)
            if match and match.end() - pos > best_len:
                best, best_len, best_kind = match, match.end() - pos, kind
        token = best["tok"] if "tok" in best.re.groupindex and best["tok"] else best[0]
        pos += len(token)
        if best_kind == "drop":
            continue
        if best_kind == "bracket":
            token = _BRACKETS[token]
        elif best_kind == "frac":
            token = token.replace(" ", "\u00a0")
        tokens.append(token.lower())


def ptb_tokenize(caption: str) -> str:
    """One caption -> its space-joined, lowercased PTB tokens without :data:`DROPPED_TOKENS`."""
    return " ".join(t for t in _tokens(caption) if t not in DROPPED_TOKENS)


def java_available() -> bool:
    """Whether the official Java tokenizer can run: a ``java`` executable and pycocoevalcap."""
    if shutil.which("java") is None:
        return False
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer  # noqa: F401
    except ImportError:
        return False
    return True


_LINE_BREAKS = str.maketrans({c: " " for c in "\r\n\x0b\x0c\x85\u2028\u2029"})


def check_backend(backend: str) -> None:
    """Raise if ``backend`` is not "python" or "java", or is "java" and cannot run here."""
    if backend not in ("python", "java"):
        raise ValueError(f"tokenizer backend must be 'python' or 'java', got {backend!r}")
    if backend == "java" and not java_available():
        raise RuntimeError(
            "the 'java' tokenizer needs a `java` executable on PATH and `pip install pycocoevalcap`; "
            "use 'python' otherwise"
        )


def _java_tokenize(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer`` (one Java call for all captions)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The jar reads one caption per line: other line breaks would shift every later caption, and
    # blank captions are left out (a trailing blank line is lost), as their tokens are empty anyway.
    lines = [c.translate(_LINE_BREAKS) for c in captions]
    keep = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    if keep:
        result = PTBTokenizer().tokenize({i: [{"caption": lines[i]}] for i in keep})
        for i in keep:
            out[i] = result[i][0]
    return out


def tokenize_captions(captions: Sequence[str], backend: Backend = "python") -> list[str]:
    """``N`` captions -> ``N`` space-joined token strings, the input of the COCO scorers.

    ``backend="java"``: the official Java tokenizer (:func:`java_available`); ``"python"``: the
    pure-Python one (:func:`ptb_tokenize`, see the module docstring for where they may differ).
    """
    check_backend(backend)
    if backend == "java":
        return _java_tokenize(captions)
    return [ptb_tokenize(c) for c in captions]
