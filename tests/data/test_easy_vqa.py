import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lightning_blip.data.annotations import load_annotations
from lightning_blip.data.easy_vqa import COLOURS, SHAPES, easy_vqa_questions, write_easy_vqa_captions

# the RGB value each colour name is drawn with (read off the images)
PIXEL_COLOURS = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
CAPTION = re.compile(rf"a (small|large) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_easy_vqa_captions(tmp_path_factory.mktemp("easy_vqa"))


@pytest.mark.parametrize(("split", "total"), [("train", 4000), ("test", 1000)])
def test_every_kept_image_has_size_colour_and_shape(written: dict, split: str, total: int) -> None:
    records = json.loads(Path(written[split]).read_text())
    assert len(records) == written[f"num_{split}"] == total - written[f"dropped_{split}"]
    assert written[f"dropped_{split}"] < 0.15 * total
    assert all(CAPTION.fullmatch(r["caption"]) for r in records)
    assert len({r["image_id"] for r in records}) == len(records)
    assert all(r["image_id"] == f"{split}/{Path(r['image']).stem}" for r in records)
    sizes = Counter(r["caption"].split()[1] for r in records)
    assert abs(sizes["small"] - sizes["large"]) < 0.1 * len(records)


def test_records_load_and_images_open(written: dict) -> None:
    records, skipped = load_annotations(written["test"])
    assert skipped == 0 and len(records) == written["num_test"]
    with Image.open(Path(written["image_root"]) / records[0].image) as image:
        assert image.size == (64, 64)


def test_caption_colour_matches_the_pixels(written: dict) -> None:
    records, _ = load_annotations(written["train"])
    for record in records[:40]:
        with Image.open(Path(written["image_root"]) / record.image) as file:
            counts = sorted(file.convert("RGB").getcolors(64 * 64), reverse=True)
        shape_colour = counts[1][1]  # counts[0] is the background
        assert PIXEL_COLOURS[record.captions[0].split()[2]] == shape_colour, record


def test_vqa_records(written: dict) -> None:
    questions = easy_vqa_questions("test")
    assert len(questions) == 9673
    assert set(questions[0]) == {"image", "question", "answer", "image_id"}
    assert all(q["answer"] in COLOURS | SHAPES | {"yes", "no"} for q in questions)
    assert (Path(written["image_root"]) / questions[0]["image"]).is_file()
    with pytest.raises(ValueError):
        easy_vqa_questions("val")
