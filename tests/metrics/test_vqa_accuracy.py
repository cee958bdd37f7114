"""VQA accuracy against the official VQA v2 rules, with expected values worked out by hand."""

from __future__ import annotations

import random

import pytest
import torch

from lightning_blip.metrics import VQAAccuracy, normalize_answer, vqa_accuracy


def ten(answer: str) -> list[str]:
    return [answer] * 10


def mixed(answer: str, n: int, other: str = "purple") -> list[str]:
    """``n`` annotators gave ``answer``, the other ``10 - n`` gave ``other``."""
    return [answer] * n + [other] * (10 - n)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # 9 x min(1, 1/3) + 1 x 0, over 10; min(1, n/3) would say 1/3
        (2, 0.6),  # 8 x 2/3 + 2 x 1/3
        (3, 0.9),  # 7 x 1 + 3 x 2/3; min(1, n/3) would say 1
        (4, 1.0),  # every subset of 9 still has 3 matches
        (10, 1.0),
    ],
)
def test_leave_one_out_average(n, expected):
    assert vqa_accuracy("red", mixed("red", n)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("pred", "answers", "expected"),
    [
        # identical human answers: no normalisation at all, only newline/tab stripping
        ("two", ten("2"), 0.0),  # LAVIS's copy says 1.0 here
        ("Yes", ten("yes"), 0.0),
        ("yes.", ten("yes"), 0.0),
        (" 2\n", ten("2"), 1.0),
        ("2", ten("2\t"), 1.0),
        ("yes", ["yes"] * 9 + ["yes\n"], 1.0),  # identical once stripped
        # different answers: both sides normalised
        ("Yes", mixed("yes", 9, "Yes"), 1.0),
        ("Two", mixed("2", 3), 0.9),  # number words become digits
        ("none", mixed("0", 3), 0.9),
        ("yes.", mixed("yes", 5, "no"), 1.0),  # a period not before a digit is deleted
        ("2.5", mixed("2.5", 4), 1.0),  # "2.5" keeps its period
        ("2.5", mixed("25", 4), 0.0),
        ("1,000", mixed("1000", 3), 0.9),  # digit,digit: marks are deleted, not spaced
        ("red, white", mixed("red white", 3), 0.9),  # a mark touching a space is deleted
        ("red,white", mixed("red white", 3), 0.9),  # else it becomes a space
        ("t-shirt", mixed("t shirt", 3), 0.9),
        ("t-shirt", mixed("tshirt", 3), 0.0),
        ("t-shirt - blue", mixed("tshirt blue", 3), 0.9),  # one "- " deletes every "-"
        ("man's", mixed("man's", 3), 0.9),  # the apostrophe is not punctuation here
        ("3:00", mixed("3:00", 3), 0.9),  # nor the colon
        ("a dog", mixed("dog", 3), 0.9),  # articles are dropped
        ("The Dog", mixed("an dog", 3), 0.9),
        ("dont", mixed("don't", 3), 0.9),  # the contractions map
        ("isnt", mixed("isn't", 2), 0.6),
    ],
)
def test_official_rules(pred, answers, expected):
    assert vqa_accuracy(pred, answers) == pytest.approx(expected, abs=1e-12)


def test_normalize_answer():
    assert normalize_answer("The TWO dogs' (big) bowls!") == "2 dogs' big bowls"
    assert normalize_answer("  a  b\tc ") == "b c"
    assert normalize_answer("how'd ya; thats 2,5 x") == "how'd ya that's 25 x"
    # the script passes re.UNICODE (32) as re.sub's count: at most 32 periods are deleted
    assert normalize_answer("ok" + "." * 40) == "ok" + "." * 8


def _naive(pred: str, answers: list[str]) -> float:
    """Leave-one-out by removing each annotator from a copy, for a pool where normalising means
    lowercasing and "two" -> "2"."""
    answers, pred = [a.strip() for a in answers], pred.strip()
    if len(set(answers)) > 1:
        answers = [{"two": "2"}.get(a.lower(), a.lower()) for a in answers]
        pred = {"two": "2"}.get(pred.lower(), pred.lower())
    scores = []
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


def test_random_questions_match_a_naive_reference():
    rng = random.Random(0)
    pool = ["yes", "Yes", "no", "2", "two", " red", "red"]
    for _ in range(300):
        answers = [rng.choice(pool[: rng.randint(1, len(pool))]) for _ in range(10)]
        pred = rng.choice(pool)
        assert vqa_accuracy(pred, answers) == pytest.approx(_naive(pred, answers), abs=1e-12)


def test_metric_per_answer_type_and_repeated_ids():
    metric = VQAAccuracy()
    metric.update(["yes", "2"], [ten("yes"), mixed("2", 2)], answer_types=["yes/no", "number"], ids=[10, 11])
    metric.update(
        ["red", "yes"], [mixed("red", 1), ten("no")], answer_types=["other", "yes/no"], ids=[12, 13]
    )
    metric.update(["no"], [ten("no")], answer_types=["yes/no"], ids=[10])  # padding repeat of id 10: ignored
    result = metric.compute()
    assert set(result) == {"overall", "yes/no", "number", "other"}
    assert result["overall"].dtype == torch.float64
    assert result["overall"].item() == pytest.approx((1.0 + 0.6 + 0.3 + 0.0) / 4)
    assert result["yes/no"].item() == pytest.approx(0.5)
    assert result["number"].item() == pytest.approx(0.6)
    assert result["other"].item() == pytest.approx(0.3)


def test_metric_without_types_or_ids():
    metric = VQAAccuracy()
    metric.update(["yes", "yes"], [ten("yes"), ten("yes")])  # no ids: both count
    metric.update(["no"], [ten("yes")])
    assert {k: v.item() for k, v in metric.compute().items()} == pytest.approx({"overall": 2 / 3})
    with pytest.raises(ValueError, match="answer type"):
        metric.update(["yes"], [ten("yes")], answer_types=["colour"])


def test_a_question_without_a_type_counts_in_overall_only():
    metric = VQAAccuracy()
    metric.update(
        ["yes", "2", "red"], [ten("yes"), ten("3"), ten("red")], answer_types=["yes/no", None, "other"]
    )
    result = {k: v.item() for k, v in metric.compute().items()}
    assert result == pytest.approx({"overall": 2 / 3, "yes/no": 1.0, "other": 1.0})
