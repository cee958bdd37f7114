import pytest

from lightning_blip.data.text import pre_caption


@pytest.mark.parametrize("char", list('.!"()*#:;~'))
def test_each_blip_punctuation_mark_becomes_a_space(char: str) -> None:
    assert pre_caption(f"left{char}right") == "left right"


def test_commas_apostrophes_question_marks_and_hyphens_stay() -> None:
    assert pre_caption("A dog's well-known trick, right?") == "a dog's well-known trick, right?"


def test_lowercases_collapses_and_strips_whitespace() -> None:
    assert pre_caption("  Two\tDOGS \n\n run.  ") == "two dogs run"


def test_punctuation_runs_collapse_to_one_space() -> None:
    assert pre_caption('A "cat" (small) sits:: on ~a mat!!!') == "a cat small sits on a mat"


def test_keeps_at_most_max_words() -> None:
    caption = " ".join(f"w{i}" for i in range(35))
    assert pre_caption(caption) == " ".join(f"w{i}" for i in range(30))
    assert pre_caption("one two three four", max_words=3) == "one two three"
    assert pre_caption("one two", max_words=3) == "one two"


def test_truncation_counts_words_after_punctuation_is_removed() -> None:
    # "a.b" is two words once the full stop is a space
    assert pre_caption("a.b c d", max_words=2) == "a b"
