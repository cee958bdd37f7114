"""easy-VQA (64x64 images of one coloured shape) as image-caption and VQA records, for quick runs.

Captions ("a small red circle") come from the dataset's own questions and answers; the size word
splits the shape's pixel area at the train-set median. Image paths are relative to the package's
data folder, so nothing is copied.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

from lightning_utilities.core.imports import RequirementCache
from PIL import Image

_EASY_VQA_AVAILABLE = RequirementCache("easy-vqa")

COLOURS = frozenset({"black", "blue", "brown", "gray", "green", "red", "teal", "yellow"})
SHAPES = frozenset({"circle", "rectangle", "triangle"})
SPLITS = ("train", "test")


def _easy_vqa() -> ModuleType:
    if not _EASY_VQA_AVAILABLE:
        raise ModuleNotFoundError(f"{_EASY_VQA_AVAILABLE}: pip install 'lightning-blip[quickstart]'")
    import easy_vqa

    return easy_vqa


def easy_vqa_image_root() -> Path:
    """The easy_vqa package's data folder, which all record image paths are relative to."""
    return Path(_easy_vqa().__file__).parent / "data"


def _split_data(split: str) -> tuple[list[tuple[str, str, int]], dict[int, Path]]:
    """``([(question, answer, image number)], {image number: absolute path})`` of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    easy_vqa = _easy_vqa()
    questions, answers, numbers = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    return list(zip(questions, answers, numbers)), {n: Path(p) for n, p in paths.items()}


def easy_vqa_questions(split: str) -> list[dict[str, str]]:
    """VQA records ``{"image": relpath, "question", "answer", "image_id": "<split>/<n>"}`` of a split."""
    questions, paths = _split_data(split)
    root = easy_vqa_image_root()
    return [
        {
            "image": paths[n].relative_to(root).as_posix(),
            "question": question,
            "answer": answer,
            "image_id": f"{split}/{n}",
        }
        for question, answer, n in questions
    ]


def _attributes(questions: list[tuple[str, str, int]]) -> dict[int, dict[str, str]]:
    """Colour and shape of each image that its questions determine.

    A colour or shape word is affirmed by being an answer, by being presupposed in a "what" question
    ("what color is the circle?", "what is the red shape?"), or by a yes/no answer that says it is
    there ("is there a red shape?" yes, "is there not a circle?" no); the other yes/no answers deny it.
    An attribute is known when exactly one word of its vocabulary stays possible.
    """
    affirmed: dict[int, set[str]] = defaultdict(set)
    denied: dict[int, set[str]] = defaultdict(set)
    for question, answer, n in questions:
        words = re.findall(r"[a-z]+", question.lower())
        mentioned = {w for w in words if w in COLOURS or w in SHAPES}
        if answer in ("yes", "no"):
            negated = "not" in words or "no" in words
            (affirmed if (answer == "yes") != negated else denied)[n].update(mentioned)
        else:
            affirmed[n].update(mentioned | {answer})
    known: dict[int, dict[str, str]] = defaultdict(dict)
    for n in affirmed.keys() | denied.keys():
        for name, vocabulary in (("colour", COLOURS), ("shape", SHAPES)):
            possible = (affirmed[n] & vocabulary or vocabulary) - denied[n]
            if len(possible) == 1:
                known[n][name] = next(iter(possible))
    return known


def shape_area(path: Path) -> int:
    """Pixels that differ from the background, which is uniform and the most common colour."""
    with Image.open(path) as file:
        image = file.convert("RGB")
    num_pixels = image.width * image.height
    background_count, _ = max(image.getcolors(num_pixels))
    return num_pixels - background_count


def _size_words(paths: dict[str, dict[int, Path]]) -> dict[str, dict[int, str]]:
    """ "small" / "large" for every image of every split, split at the median shape area of train."""
    areas = {
        split: {n: shape_area(path) for n, path in split_paths.items()}
        for split, split_paths in paths.items()
    }
    threshold = statistics.median(areas["train"].values())
    return {
        split: {n: "large" if area > threshold else "small" for n, area in split_areas.items()}
        for split, split_areas in areas.items()
    }


def _caption_records(
    split: str, questions: list[tuple[str, str, int]], paths: dict[int, Path], sizes: dict[int, str] | None
) -> list[dict[str, str]]:
    """Caption records ``{"image", "caption", "image_id"}`` of the images whose colour and shape are known."""
    root = easy_vqa_image_root()
    attributes = _attributes(questions)
    records = []
    for n in sorted(paths):
        colour, shape = attributes[n].get("colour"), attributes[n].get("shape")
        if colour is None or shape is None:
            continue
        words = [colour, shape] if sizes is None else [sizes[n], colour, shape]
        records.append(
            {
                "image": paths[n].relative_to(root).as_posix(),
                "caption": "a " + " ".join(words),
                "image_id": f"{split}/{n}",
            }
        )
    return records


def write_easy_vqa_captions(out_dir: str | Path, with_size: bool = True) -> dict[str, Any]:
    """Write ``train.json`` and ``test.json`` caption annotations into ``out_dir``.

    Returns ``{"image_root", "train", "test", "num_train", "num_test", "dropped_train",
    "dropped_test"}`` (paths as strings); images whose colour or shape the questions leave open are
    dropped and counted.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {split: _split_data(split) for split in SPLITS}
    sizes = _size_words({split: paths for split, (_, paths) in data.items()}) if with_size else None
    result: dict[str, Any] = {"image_root": str(easy_vqa_image_root())}
    for split, (questions, paths) in data.items():
        records = _caption_records(split, questions, paths, None if sizes is None else sizes[split])
        path = out_dir / f"{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(path)  # atomic: a crash never leaves a half-written annotation file
        result.update(
            {split: str(path), f"num_{split}": len(records), f"dropped_{split}": len(paths) - len(records)}
        )
    return result


EASY_VQA_IMAGE_TEMPLATE = "{subtype}/images/{image_id}.png"
"""Where a VQAv2-layout easy-VQA question's image lies under :func:`easy_vqa_image_root`."""

ANNOTATORS = 10  # VQAv2 has 10 human answers per question


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: a crash never leaves a half-written file


def write_easy_vqa_vqav2(out_dir: str | Path) -> dict[str, Any]:
    """Write easy-VQA in the VQAv2 layout, plus its answer list, into ``out_dir``.

    Files: ``{split}_questions.json`` (``data_subtype`` = the split, ``image_id`` = the image
    number), ``{split}_annotations.json`` (the answer repeated for all 10 annotators, so that the
    official VQA accuracy of a correct answer is 1; ``answer_type`` ``yes/no`` or ``other``) and
    ``answer_list.json`` (the 13 answers). Images stay in the package: image root
    :func:`easy_vqa_image_root`, path template :data:`EASY_VQA_IMAGE_TEMPLATE`.

    Returns ``{"image_root", "image_template", "answer_list", "<split>_questions",
    "<split>_annotations", "num_<split>"}`` (paths as strings).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "image_root": str(easy_vqa_image_root()),
        "image_template": EASY_VQA_IMAGE_TEMPLATE,
    }
    for split in SPLITS:
        questions, _ = _split_data(split)
        entries = [
            {"question_id": i, "image_id": n, "question": question}
            for i, (question, _, n) in enumerate(questions)
        ]
        annotations = [
            {
                "question_id": i,
                "image_id": n,
                "answers": [{"answer": answer, "answer_id": j + 1} for j in range(ANNOTATORS)],
                "multiple_choice_answer": answer,
                "answer_type": "yes/no" if answer in ("yes", "no") else "other",
            }
            for i, (_, answer, n) in enumerate(questions)
        ]
        for kind, data in (
            ("questions", {"data_subtype": split, "questions": entries}),
            ("annotations", {"data_subtype": split, "annotations": annotations}),
        ):
            path = out_dir / f"{split}_{kind}.json"
            _write_json(path, data)
            result[f"{split}_{kind}"] = str(path)
        result[f"num_{split}"] = len(entries)
    answer_list = out_dir / "answer_list.json"
    _write_json(answer_list, sorted(_easy_vqa().get_answers()))
    result["answer_list"] = str(answer_list)
    return result
