"""BLIP-2 models from other formats: our config of a transformers BLIP-2 checkpoint, and the loaders
``Blip2Model.from_pretrained`` / ``Blip2ForGeneration.from_pretrained`` add to the common ones
(:data:`BLIP2_LOADERS`). The key tables are in :mod:`lightning_blip.weights`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lightning_blip.models.blip2.config import Blip2Config, Blip2LLMConfig
from lightning_blip.models.blip2.qformer import QFormerConfig
from lightning_blip.models.shared.pretrained import Loader, _from_ours
from lightning_blip.models.shared.vision import vision_config_from_transformers
from lightning_blip.weights.lavis_blip2 import lavis_blip2_model
from lightning_blip.weights.transformers_blip import bert_fields_from_transformers
from lightning_blip.weights.transformers_blip2 import (
    checkpoint_kind,
    load_our_blip2,
    load_transformers_blip2,
    read_transformers_blip2_config,
)


def blip2_config_from_transformers(
    directory: str | Path, llm: str | Path | None = None
) -> tuple[Blip2Config | Blip2LLMConfig, list[str]]:
    """Our config for a transformers BLIP-2 ``config.json``, and notes on what differs.

    A ``Blip2ForConditionalGeneration`` gives a :class:`Blip2LLMConfig` whose ``llm`` is ``llm`` (a
    directory holding the language model, see
    :func:`~lightning_blip.weights.transformers_blip2.write_llm_directory`); a
    ``Blip2ForImageTextRetrieval`` gives a :class:`Blip2Config`. The ViT is timm's ``Eva`` (BLIP-2's
    EVA ViT-g layout) with the config's sizes and LayerNorm epsilon, every block kept and no final norm.
    """
    hf = read_transformers_blip2_config(directory)
    kind = checkpoint_kind(hf)
    v, q = hf.vision_config, hf.qformer_config
    vision = vision_config_from_transformers(v, "eva_giant_patch14_224", final_norm=False)  # sizes from v
    qformer = QFormerConfig(
        **bert_fields_from_transformers(q),
        encoder_width=v.hidden_size,
        cross_attention_freq=q.cross_attention_frequency,
        num_query_tokens=hf.num_query_tokens,
        text=kind == "retrieval",
        initializer_range=q.initializer_range,
    )
    notes = []
    if v.layer_norm_eps != 1e-5:
        notes.append(f"ln_vision eps {v.layer_norm_eps} as transformers' post_layernorm; LAVIS uses 1e-5")
    if v.hidden_act != "gelu" or q.hidden_act != "gelu":
        notes.append(f"activations {v.hidden_act!r}/{q.hidden_act!r}: ours use exact GELU")
    if kind == "retrieval":
        config = Blip2Config(
            vision=vision,
            qformer=qformer,
            embed_dim=hf.image_text_hidden_size,
            pad_token_id=q.pad_token_id,
            ln_vision_eps=v.layer_norm_eps,
        )
        return config, notes
    if llm is None:
        raise ValueError("a Blip2ForConditionalGeneration config needs llm=<the language model's directory>")
    llm_kind = "seq2seq" if hf.text_config.is_encoder_decoder else "causal"
    config = Blip2LLMConfig(
        vision=vision, qformer=qformer, llm=str(llm), llm_kind=llm_kind, ln_vision_eps=v.layer_norm_eps
    )
    return config, notes


def _from_ours_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    """A :func:`~lightning_blip.convert.ours_blip2.convert_transformers_blip2` directory (``llm/`` beside
    it, if any), in eval mode; with ``config``, any directory of ours."""
    if config is not None:
        return _from_ours(cls, path, config, strict)
    values = json.loads((path / "config.json").read_text())
    held = "Blip2ForGeneration" if "llm" in values else "Blip2Model"
    if held != cls.__name__:
        raise ValueError(f"{path} holds a {held}, not a {cls.__name__}")
    if "llm" in values and (path / "llm").is_dir():  # the directory may have moved since it was written
        values["llm"] = str(path / "llm")
    model = cls(cls.config_class.from_dict(values))
    load_our_blip2(model, path / "model.safetensors", strict)
    return model.eval()


def _from_transformers_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    # a Blip2ForConditionalGeneration's LLM is read from the same directory (its language_model.*),
    # when the model is built; the rest of the weights are then read without it
    model = cls(config if config is not None else blip2_config_from_transformers(path, llm=path)[0])
    llm = getattr(model.config, "llm", None)
    llm_loaded = llm is not None and Path(llm).resolve() == path.resolve()
    load_transformers_blip2(model, path, strict=strict, llm_loaded=llm_loaded)
    return model


def _from_lavis_blip2(cls: type[nn.Module], path: Path, config: Any, strict: bool) -> nn.Module:
    if config is None:
        raise ValueError(f"{path}: a LAVIS BLIP-2 file holds no config (sizes, LLM); pass config=")
    return lavis_blip2_model(cls, config, path, strict)[0]


BLIP2_LOADERS: dict[str, Loader] = {
    "ours": _from_ours_blip2,
    "transformers": _from_transformers_blip2,
    "lavis-blip2": _from_lavis_blip2,
}
"""format -> loader of ``Blip2Model`` and ``Blip2ForGeneration`` (beside the Lightning formats)."""
