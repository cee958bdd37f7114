"""easy-VQA as text only, for the small language model of the BLIP-2 miniature.

The LM reads plain captions ("a small red circle") and captions followed by a question and its
answer ("a red circle that is small. question: what color is the shape? short answer: red"). The
second kind teaches it to answer from a description in its context; in BLIP-2 the Q-Former's visual
soft prompt takes the place of that description.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from lightning_blip.data.easy_vqa import COLOURS, SHAPES

VQA_PROMPT = "question: {} short answer:"


def caption_qa_text(caption: str, question: str, answer: str) -> str:
    """``"<caption>. question: <question> short answer: <answer>\\n"``."""
    return f"{caption}. {VQA_PROMPT.format(question)} {answer}\n"


def paraphrases(caption: str) -> list[str]:
    """``"a small red circle"`` and its reorderings ``"a red circle that is small"``,
    ``"a small circle that is red"``; a caption of another form is returned alone."""
    words = caption.split()
    if len(words) != 4:
        return [caption]
    _, size, colour, shape = words
    return [caption, f"a {colour} {shape} that is {size}", f"a {size} {shape} that is {colour}"]


def easy_vqa_lm_texts(
    captions: Iterable[dict], questions: Iterable[dict], yes_no_fraction: float = 0.25, seed: int = 0
) -> list[str]:
    """Plain captions, then one caption-question-answer text per question of a captioned image.

    ``captions``: records ``{"image_id", "caption"}`` (:func:`write_easy_vqa_captions`);
    ``questions``: records ``{"image_id", "question", "answer"}`` (:func:`easy_vqa_questions`).
    Three quarters of the questions are yes/no: only ``yes_no_fraction`` of them are kept, so the
    colour and shape questions are not drowned. The caption before a question is one of its
    :func:`paraphrases`, drawn at random, so the LM learns to read the attributes in any order.
    Every text ends with a newline, where stage-2 generation stops.
    """
    rng = random.Random(seed)
    caption_of = {record["image_id"]: record["caption"] for record in captions}
    texts = [caption + "\n" for caption in caption_of.values()]
    for q in questions:
        if q["image_id"] not in caption_of:
            continue
        if answer_type(q["answer"]) == "yes/no" and rng.random() >= yes_no_fraction:
            continue
        context = rng.choice(paraphrases(caption_of[q["image_id"]]))
        texts.append(caption_qa_text(context, q["question"], q["answer"]))
    return texts


def answer_type(answer: str) -> str:
    """The kind of an easy-VQA question, read from its answer: ``yes/no``, ``color`` or ``shape``."""
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in COLOURS:
        return "color"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"not an easy-VQA answer: {answer!r}")
