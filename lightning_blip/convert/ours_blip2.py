"""BLIP-2 in our own directory format: :func:`convert_transformers_blip2` writes one from a transformers
checkpoint, :func:`load_converted_blip2` reads it back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lightning_blip.models.blip2 import Blip2ForGeneration, Blip2Model
from lightning_blip.models.blip2.pretrained import blip2_config_from_transformers
from lightning_blip.weights.transformers_blip import read_transformers_state_dict
from lightning_blip.weights.transformers_blip2 import (
    checkpoint_kind,
    load_transformers_blip2,
    read_transformers_blip2_config,
    save_our_blip2,
    write_llm_directory,
)


def convert_transformers_blip2(source_dir: str | Path, output_dir: str | Path, strict: bool = True) -> Path:
    """Write our BLIP-2 model for a transformers ``save_pretrained`` directory; returns ``output_dir``.

    ``output_dir`` gets ``config.json`` (our config as a dict), ``model.safetensors`` (every weight of
    ours but the LLM's), ``conversion.json`` (``kind``, notes, the load report and, for a
    ``Blip2ForConditionalGeneration``, its ``image_token_index``, which the export reuses) and, for
    a ``Blip2ForConditionalGeneration``, ``llm/`` (the language model and its tokenizer). Read it
    back with :func:`load_converted_blip2`.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    hf_config = read_transformers_blip2_config(source_dir)
    kind = checkpoint_kind(hf_config)
    state = read_transformers_state_dict(source_dir)
    llm = write_llm_directory(source_dir, state, output / "llm").resolve() if kind == "generation" else None
    config, notes = blip2_config_from_transformers(source_dir, llm)
    model = Blip2ForGeneration(config) if kind == "generation" else Blip2Model(config)
    report = load_transformers_blip2(model, state, strict=strict)
    save_our_blip2(model, output)
    summary = {
        "source": str(source_dir),
        "model": type(model).__name__,
        "kind": kind,
        "notes": notes,
        **asdict(report),
    }
    if kind == "generation":
        summary["image_token_index"] = hf_config.image_token_index
    (output / "conversion.json").write_text(json.dumps(summary, indent=2))
    return output


def load_converted_blip2(directory: str | Path, strict: bool = True) -> Blip2Model | Blip2ForGeneration:
    """Our model from a :func:`convert_transformers_blip2` directory (``llm/`` beside it, if any), in eval mode.

    ``strict``: see :func:`~lightning_blip.weights.transformers_blip2.load_our_blip2`.
    """
    values = json.loads((Path(directory) / "config.json").read_text())
    cls = Blip2ForGeneration if "llm" in values else Blip2Model
    return cls.from_pretrained(directory, strict=strict)
