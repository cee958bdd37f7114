"""Small on-disk VQA sets for tests: coloured squares, VQAv2-layout and BLIP flat files, an answer list."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lightning_blip.data.vqa import COCO_IMAGE_TEMPLATE

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}
SUBTYPE = "train2014"


def _image_path(root: Path, image_id: int) -> Path:
    path = root / COCO_IMAGE_TEMPLATE.format(subtype=SUBTYPE, image_id=image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_fake_vqa(root: Path, num_images: int = 6, corrupt: int = 0) -> dict[str, Path]:
    """Write COCO-named JPEGs (+ ``corrupt`` unreadable ones) and VQA files under ``root``.

    Two questions per image: "what color is the square?" (10 answers, mostly the colour) and "is
    there a square?" (10 x "yes"). Returns ``{"image_root", "questions", "annotations", "flat",
    "answer_list"}``; the flat ``.jsonl`` file holds the same questions (one line not JSON).
    """
    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    questions, annotations, flat = [], [], []
    for i in range(num_images + corrupt):
        image_id = 100 + i
        if i < num_images:
            colour = names[i % len(names)]
            image = Image.new("RGB", (40, 40), (255, 255, 255))
            image.paste(COLOURS[colour], (8, 8, 32, 32))
            image.save(_image_path(root, image_id), format="JPEG")
        else:
            colour = "red"
            _image_path(root, image_id).write_bytes(b"not a jpeg")
        colour_answers = [colour] * 7 + ["orange"] * 2 + ["pink"]
        for j, (question, answers, kind) in enumerate(
            (
                ("What color is the square?", colour_answers, "other"),
                ("Is there a square?", ["yes"] * 10, "yes/no"),
            )
        ):
            qid = image_id * 10 + j
            questions.append({"question_id": qid, "image_id": image_id, "question": question})
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)],
                    "answer_type": kind,
                    "multiple_choice_answer": answers[0],
                }
            )
            relpath = COCO_IMAGE_TEMPLATE.format(subtype=SUBTYPE, image_id=image_id)
            flat.append({"question_id": qid, "question": question, "answer": answers, "image": relpath})
    paths = {
        "image_root": root,
        "questions": root / "questions.json",
        "annotations": root / "annotations.json",
        "flat": root / "flat.jsonl",
        "answer_list": root / "answer_list.json",
    }
    paths["questions"].write_text(json.dumps({"data_subtype": SUBTYPE, "questions": questions}))
    paths["annotations"].write_text(json.dumps({"data_subtype": SUBTYPE, "annotations": annotations}))
    lines = [json.dumps(r) for r in flat]
    lines.insert(2, "{not json")
    paths["flat"].write_text("\n".join(lines) + "\n")
    paths["answer_list"].write_text(json.dumps([*COLOURS, "orange", "pink", "yes", "no", "a red square"]))
    return paths
