"""The pure-Python PTB tokenizer against hand-checked cases and the official Java tokenizer."""

from __future__ import annotations

import shutil

import pytest
from caption_data import generated_captions

from lightning_blip.metrics import CIDErScore
from lightning_blip.metrics.caption_tokenizer import java_available, ptb_tokenize, tokenize_captions

needs_java = pytest.mark.skipif(
    not java_available(), reason="the official PTB tokenizer needs `java` on PATH and pycocoevalcap installed"
)

# Tricky but ordinary cases: abbreviations, initials before sentence starts, clitics, numbers.
HAND_CASES = [
    "Plan A. The end", "plan a. the end", "vitamin C. And more", "see Mr. Smith at 5 p.m. today",
    "st. louis and dr. who and no. 5 and no. the end", "fig. 3 and vol. 2 and ca. 1990", "a dog etc.",
    "the u.s. flag", "the U.S. The flag", "I. am", "gotta go, wanna come?", "'tis the season",
    "O'Neil's dog and d'Angelo", "the 1990s and '90s and 90's", "a cat.a dog", "hello,world and a,b",
    "1,2 and 12,345,678 and 10:30pm", "1.5.3 and 1..5 and .5 and 5. and +5 and 5-6",
    "a 5x5 grid, a 3d model, 1st place", "A MAN'S DOG ISN'T HERE.", "he isn' t", "y'know",
    "a ... b and a.... b and a. . . b", "a --- b and a ---- b", "3 1/2 cups and 10/20/2020",
    "$5 and \u00a35 and \u20ac5", "a (big) dog and a(big) dog", "dogs's and dogs'' and dog''s",
    "a cat !? and a cat !!", "'' ' and ` ' and ``hi''", "## and ** and __ and @@ and @home and #tag",
    "  leading spaces and trailing  ", "a caption with a tab\tinside", "", "etc.-a and Etc.s' and jan.x",
    "x-5.5 and x-5:30 and .5-inch and 3.5-inch and -5-of and u.s.-made", "ma'am's and Shi'ite and don'ts",
    "'10% and '12-inch' and '90s and '99", "#e.g. and #tag-x and #tag's", "hello,world-wide and mr.x",
    "A B&W photo", "an AT&T store and A&P's and S&P500 and A&B&C and B&W.", "r&b and Q&A and Rock&Roll and b&W",
    "a B&W-photo and AT&t and 3D&T", "don`t walk and can`t and won`t and DON`T but it`s and I`m",
    "good ol' days and an OL' truck and ol'man and bol' x", "c'mon and C'mon and C'MON! and c'mere",
]  # fmt: skip


@pytest.mark.parametrize(
    ("caption", "tokens"),
    [
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ("Two dogs (one black, one white) play!", "two dogs -lrb- one black one white -rrb- play"),
        ('The cat\'s toy isn\'t on the "red" mat; it\'s under it...', "the cat 's toy is n't on the red mat it 's under it"),
        ("A black-and-white photo of 3.5 people, 1,000 cars & a U.S. flag.", "a black-and-white photo of 3.5 people 1,000 cars & a u.s. flag"),
        ("don't can't won't cannot gonna I'm", "do n't ca n't wo n't can not gon na i 'm"),
        ("A {strange} [thing] -- with dashes - and a hyphen-word.", "a -lcb- strange -rcb- -lsb- thing -rsb- with dashes and a hyphen-word"),
        ("Mr. Smith's dog at 5:30 p.m. costs $5.50 or 10% off?!", "mr. smith 's dog at 5:30 p.m. costs $ 5.50 or 10 % off ?!"),
        ("\u201cquoted\u201d man\u2019s dog \u2014 here\u2026", "quoted man 's dog here"),
        ("", ""),
    ],
)  # fmt: skip
def test_hand_checked_tokens(caption, tokens):
    assert ptb_tokenize(caption) == tokens


@needs_java
def test_python_tokenizer_matches_the_java_one():
    captions = generated_captions(400) + HAND_CASES
    python, java = tokenize_captions(captions, "python"), tokenize_captions(captions, "java")
    mismatches = [(c, p, j) for c, p, j in zip(captions, python, java) if p != j]
    assert not mismatches, mismatches[:5]


@needs_java
def test_java_backend_keeps_captions_aligned():
    """Blank captions and stray line breaks must not shift the captions after them."""
    captions = ["a dog.", "", "a cat\ron a mat", "   ", "two birds\u2028flying", "the end"]
    assert tokenize_captions(captions, "java") == [
        "a dog",
        "",
        "a cat on a mat",
        "",
        "two birds flying",
        "the end",
    ]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        tokenize_captions(["a dog"], "perl")


def test_java_backend_without_java_fails_at_once(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="`java` executable"):
        CIDErScore(tokenizer="java")
