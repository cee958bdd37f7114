"""Small on-disk image-text sets for tests: coloured squares with captions, LAVIS-style json."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}


def write_fake_dataset(root: Path, num_images: int = 16, corrupt: int = 0) -> Path:
    """Write ``num_images`` PNGs (+ ``corrupt`` unreadable ones) and ``train.json``; return its path."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLOURS)
    for i in range(num_images):
        colour = names[i % len(names)]
        image = Image.new("RGB", (40, 40), (255, 255, 255))
        offset = 4 + (i * 3) % 12
        image.paste(COLOURS[colour], (offset, offset, offset + 20, offset + 20))
        image.save(root / f"{i}.png")
        records.append({"image": f"{i}.png", "caption": f"A {colour} square, number {i}!", "image_id": i})
    for j in range(corrupt):
        (root / f"bad{j}.png").write_bytes(b"not a png")
        records.insert(3 + j, {"image": f"bad{j}.png", "caption": "broken", "image_id": f"bad{j}"})
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


def write_fake_caption_eval(train_json: Path, corrupt: int = 0) -> Path:
    """Karpathy-style ``val.json`` beside ``train_json`` (same images): one record per image with a list
    of references, ``{"image", "caption": [str, str]}``; ``corrupt`` unreadable images too."""
    root = train_json.parent
    records = []
    for record in json.loads(train_json.read_text()):
        if str(record["image"]).startswith("bad"):
            continue
        colour = record["caption"].split()[1]
        records.append({"image": record["image"], "caption": [record["caption"], f"A {colour} box."]})
    for j in range(corrupt):
        (root / f"bad_eval{j}.png").write_bytes(b"not a png")
        records.insert(1 + j, {"image": f"bad_eval{j}.png", "caption": ["broken"]})
    path = root / "val.json"
    path.write_text(json.dumps(records))
    return path
