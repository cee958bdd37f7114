"""The ``README.md`` model card of a transformers export: what the model is, where it came from, what
was converted and left out, what parity was tested, and how to run it with transformers.

The card follows the hub's conventions: YAML front matter (``library_name``, ``pipeline_tag``,
``tags``), then prose. Its Python snippet names the folder as ``MODEL``, a placeholder to replace by
the folder's path or hub id (``tests/weights/test_model_card.py`` runs it on an export).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from lightning_blip.atomic import atomic_write_text

PLACEHOLDER = "<this folder or its hub id>"

PAPERS = {
    "BLIP": "BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language Understanding and "
    "Generation (Li et al., 2022, arXiv:2201.12086)",
    "BLIP-2": "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language "
    "Models (Li et al., 2023, arXiv:2301.12597)",
}

_CLASSES = {  # transformers class -> (family, pipeline_tag, what ours equals it on, the snippet's lines)
    "BlipForConditionalGeneration": (
        "BLIP",
        "image-to-text",
        ("ViT tokens, LM logits, greedy and beam captions (1e-5, fp32); transformers' processor + `generate` "
        "give our captions on PIL images"),
        [
            "from transformers import BlipForConditionalGeneration, BlipProcessor",
            "processor = BlipProcessor.from_pretrained(MODEL)",
            "model = BlipForConditionalGeneration.from_pretrained(MODEL)",
            'inputs = processor(images=image, text="a picture of ", return_tensors="pt")',
            "ids = model.generate(**inputs, num_beams=3, max_length=20, min_length=5)",
            "print(processor.decode(ids[0], skip_special_tokens=True))",
        ],
    ),
    "BlipForImageTextRetrieval": (
        "BLIP",
        "zero-shot-image-classification",
        "ViT tokens, ITC similarity, and ITM logits when the text starts with [ENC] (1e-5, fp32)",
        [
            "from transformers import BlipForImageTextRetrieval, BlipProcessor",
            "processor = BlipProcessor.from_pretrained(MODEL)",
            "model = BlipForImageTextRetrieval.from_pretrained(MODEL)",
            'inputs = processor(images=image, text="a picture of a dog", return_tensors="pt")',
            "print(model(**inputs, use_itm_head=False).itm_score)  # ITC cosine similarity",
        ],
    ),
    "BlipForQuestionAnswering": (
        "BLIP",
        "visual-question-answering",
        ("ViT tokens and generated answers, one question at a time (transformers' answer decoder ignores "
        "the padding of shorter questions in a batch)"),
        [
            "from transformers import BlipForQuestionAnswering, BlipProcessor",
            "processor = BlipProcessor.from_pretrained(MODEL)",
            "model = BlipForQuestionAnswering.from_pretrained(MODEL)",
            'inputs = processor(images=image, text="what colour is the picture?", return_tensors="pt")',
            "ids = model.generate(**inputs, num_beams=3, max_length=10, min_length=1)",
            "print(processor.decode(ids[0], skip_special_tokens=True))",
        ],
    ),
    "Blip2ForConditionalGeneration": (
        "BLIP-2",
        "image-to-text",
        ("ViT + ln_vision, Q-Former outputs, LM logits and generated text (1e-5, fp32); transformers' "
        "processor + `generate` give our text on PIL images"),
        [
            "from transformers import Blip2ForConditionalGeneration, Blip2Processor",
            "processor = Blip2Processor.from_pretrained(MODEL)",
            "model = Blip2ForConditionalGeneration.from_pretrained(MODEL)",
            'inputs = processor(images=image, text="", return_tensors="pt")',
            "ids = model.generate(**inputs, num_beams=5, max_new_tokens=30)",
            "print(processor.batch_decode(ids, skip_special_tokens=True)[0])",
        ],
    ),
    "Blip2ForImageTextRetrieval": (
        "BLIP-2",
        "zero-shot-image-classification",
        "ViT + ln_vision, Q-Former outputs, ITC (max over the queries) and ITM logits (1e-5, fp32)",
        [
            "import torch",
            "from transformers import Blip2ForImageTextRetrieval",
            "model = Blip2ForImageTextRetrieval.from_pretrained(MODEL)",
            "size = model.config.vision_config.image_size  # no processor is written: resize to size x size,",
            "pixels = torch.randn(1, 3, size, size)  # normalise with CLIP's mean and std",
            "out = model(pixel_values=pixels, input_ids=torch.tensor([[101, 102]]), use_image_text_matching_head=False)",
            "print(out.logits_per_image)",
        ],
    ),
}  # fmt: skip


@dataclass
class CardFacts:
    """What a card states about one export.

    Attributes:
        transformers_class: the class the folder loads as (a key of ``_CLASSES``).
        source: the checkpoint converted (a path or name), None when a model object was exported.
        weights_written: tensors in ``model.safetensors``.
        left_out: our weights not written, by group (:func:`left_out_groups`): parts of our model that
            the transformers class has no place for.
        notes: what a user of the folder must know (generation settings, token conventions).
    """

    transformers_class: str
    source: str | None
    weights_written: int
    left_out: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def left_out_groups(keys: list[str], patterns: Sequence[str]) -> dict[str, int]:
    """``{pattern as a glob: count}`` of our ``keys`` an export left out, grouped by the format's
    regexes of what it does not hold (``text\\.layers\\.\\d+\\.self_attn\\..*`` -> ``text.layers.*.self_attn.*``)."""
    groups: dict[str, int] = {}
    for key in keys:
        pattern = next((p for p in patterns if re.fullmatch(p, key)), key)
        glob = pattern.replace(r"\.", "\0").replace(r"\d+", "*").replace(".*", "*").replace("\0", ".")
        groups[glob] = groups.get(glob, 0) + 1
    return groups


def card_text(facts: CardFacts) -> str:
    """The card's Markdown, front matter included."""
    family, pipeline_tag, parity, snippet = _CLASSES[facts.transformers_class]
    tags = ["blip" if family == "BLIP" else "blip-2", "lightning-blip", "image-text"]
    left = ", ".join(f"`{group}` ({n})" for group, n in sorted(facts.left_out.items())) or "nothing"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
        "",
        f"# {family} as transformers' `{facts.transformers_class}`",
        "",
        (
            f"A {family} model ({PAPERS[family]}), written by `lightning_blip convert --to transformers` "
            "from a lightning_blip model."
        ),
        "",
        "## Source and conversion",
        "",
        f"- Source checkpoint: `{facts.source}`"
        if facts.source
        else "- Source: a lightning_blip model object",
        (
            f"- Converted: {facts.weights_written} tensors in `model.safetensors`, with `config.json` and, where "
            "the class has one, the processor files of lightning_blip's preprocessing (image size, bicubic "
            "resize, CLIP mean and std, the tokenizer's special tokens)."
        ),
        f"- Left out (weights of ours that `{facts.transformers_class}` has no place for): {left}.",
        "",
        "## Parity",
        "",
        f"lightning_blip's tests check that this class equals our model on: {parity}.",
        "",
    ]
    if facts.notes:
        lines += ["## What to know", "", *(f"- {note}" for note in facts.notes), ""]
    lines += [
        "## How to use it",
        "",
        "```python",
        "from PIL import Image",
        "",
        f'MODEL = "{PLACEHOLDER}"',
        'image = Image.new("RGB", (384, 384), "red")  # your image',
        *snippet,
        "```",
        "",
    ]
    return "\n".join(lines)


def saved_tensor_count(folder: Path) -> int:
    """Tensors in ``folder``'s ``model.safetensors`` (or its shards, by their index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return len(json.loads(index.read_text())["weight_map"])
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return len(list(f.keys()))


def write_model_card(output: str | Path, facts: CardFacts) -> Path:
    """Write ``README.md`` into ``output`` atomically (a temporary file, then a rename)."""
    path = Path(output) / "README.md"
    atomic_write_text(path, card_text(facts))
    return path
