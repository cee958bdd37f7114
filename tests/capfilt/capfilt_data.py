"""Tiny captioner/filter checkpoints and a small web + human input set for the CapFilt tests."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from conftest import tiny_blip
from fake_data import write_fake_dataset
from safetensors.torch import save_file

from lightning_blip.models.blip import BlipModel


def save_tiny_blip(path: Path, seed: int, itm_scale: float = 1.0) -> Path:
    """A random tiny ``BlipModel`` as ``config.json`` + ``model.safetensors`` (the "ours" format).

    ``itm_scale`` multiplies the ITM head's weights, and its bias is set so that one reference pair (a
    white image) scores 0.5: random weights give p(match) within 1e-3 of 0.5 for every pair, a scaled and centred
    filter keeps some texts and drops others at the 0.5 threshold.
    """
    torch.manual_seed(seed)
    config = tiny_blip()
    model = BlipModel(config).eval()
    if itm_scale != 1.0:
        model.itm_head.weight.data *= itm_scale
        model.itm_head.bias.data.zero_()
        with torch.no_grad():
            ids, mask = model.tokenize(["a red square, number 1"])
            white = torch.full((1, 3, 32, 32), 1.8)  # the fake images' background, normalised
            logits = model.itm_logits(ids, mask, image_embeds=model.forward_image(white))[0]
        model.itm_head.bias.data[1] = logits[0] - logits[1]
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        path / "model.safetensors",
    )
    (path / "config.json").write_text(json.dumps(asdict(config)))
    return path


def write_inputs(root: Path, num_web: int = 10) -> dict[str, Path]:
    """A web source (``num_web`` images, one unreadable image, one malformed JSONL line, two files) and a
    human source (4 records), images under ``root / "images"``."""
    train = write_fake_dataset(root / "images", num_images=num_web, corrupt=1)
    web = json.loads(train.read_text())
    half = len(web) // 2
    (root / "web-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in web[:half]) + "{not json\n")
    (root / "web-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in web[half:]))
    human = [
        {"image": f"{i}.png", "caption": [f"human caption {i}", "another"], "image_id": i} for i in range(4)
    ]
    (root / "human.json").write_text(json.dumps(human))
    return {"image_root": root / "images", "web": root / "web-*.jsonl", "human": root / "human.json"}


def recipe_args(inputs: dict[str, Path], captioner: Path, filter_: Path, out: Path) -> list[str]:
    """Command-line arguments over ``recipes/capfilt.yaml`` for the tiny models and inputs, on 1 CPU
    (short captions, and a threshold at which this filter keeps some web texts and drops others)."""
    sources = [
        {"name": "web", "annotations": [str(inputs["web"])]},
        {"name": "human", "annotations": [str(inputs["human"])], "human_annotated": True},
    ]
    return [
        f"--captioner={captioner}", f"--filter={filter_}", f"--image_root={inputs['image_root']}",
        f"--sources={json.dumps(sources)}", f"--output_dir={out}", "--image_size=32", "--shard_size=3",
        "--batch_size=2", "--num_workers=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.strategy=auto", "--trainer.precision=32-true", "--trainer.num_nodes=1",
        "--captioning.max_length=8", "--filtering.threshold=0.4",
    ]  # fmt: skip
