"""salesforce/LAVIS BLIP-2 ``.pth`` checkpoints (``{"model": state_dict}``) -> ours.

LAVIS's layout (``lavis/models/blip2_models``): ``visual_encoder.*`` (its EVA ViT-g: ``blocks.N.attn.qkv``
without bias plus ``attn.q_bias`` / ``attn.v_bias``), ``ln_vision``, ``query_tokens``, ``Qformer.bert.*``
(BERT names: ``attention.self.query``, ``crossattention``, ``intermediate_query`` / ``output_query``
for the queries' FFN), ``Qformer.cls.predictions.*`` (the ITG head), ``vision_proj``, ``text_proj``,
``itm_head``, ``temp`` (stage 1, ``blip2`` / ``blip2_feature_extractor`` / ``blip2_image_text_matching``)
and ``opt_proj`` + ``opt_model.*`` or ``t5_proj`` + ``t5_model.*`` (stage 2).

- LAVIS saves only trainable weights: the frozen ViT and LLM are usually absent and reported as
  expected-absent (they come from ``config.vision.weights`` / ``config.llm``); when present (the
  ViT of a fine-tune that trained it), they are loaded.
- Into a :class:`~lightning_blip.models.blip2.llm.Blip2ForGeneration`, the stage-1-only keys a
  checkpoint may hold (the Q-Former's text embeddings and text FFN, ``Qformer.cls``, the ITC/ITM
  heads, ``temp``) are ignored and listed as such, as LAVIS's OPT/T5 models drop those modules.
- ``temp`` is 0-d in LAVIS and ``(1,)`` in ours.
- ``ln_vision`` has LayerNorm's default epsilon, 1e-5 (our ``ln_vision_eps`` default).
- LAVIS builds its T5 with ``dense_act_fn="gelu"`` (exact GELU; FlanT5's config says ``gelu_new``):
  :func:`lavis_blip2_model` builds the model of a file with ``t5_proj`` keys so, unless the config's
  ``llm_dense_act_fn`` is set.
- Only the EVA ViT-g layout is read; LAVIS's CLIP ViT-L (``pretrain_vitL``) keeps OpenAI CLIP names
  and its keys would be reported unexpected.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lightning_blip.weights.keymap import LoadReport, Rule, load_with_rules
from lightning_blip.weights.transformers_blip import read_source
from lightning_blip.weights.transformers_blip2 import (
    has_split_qkv_bias,
    match_qkv_bias,
    model_kind,
    qformer_layer_rules,
)

_WB = r"(weight|bias)"
_BERT = r"Qformer\.bert\."
_HEAD = r"Qformer\.cls\.predictions\."
LAVIS_VIT_ATTENTION = r"visual_encoder\.blocks\.\d+\.attn\."
LAVIS_T5_ACT = "gelu"
"""The ``dense_act_fn`` LAVIS sets on the T5 it builds (``blip2_t5.py``)."""

LAVIS_BLIP2_RULES: tuple[Rule, ...] = (
    # the EVA ViT keeps timm-like names; q_bias/v_bias are fused first when our ViT has qkv.bias
    (r"visual_encoder\.(.+)", r"image_encoder.visual_encoder.vit.\1"),
    (r"ln_vision\." + _WB, r"image_encoder.ln_vision.\1"),
    ("query_tokens", "qformer.query_tokens"),
    (_BERT + r"embeddings\.LayerNorm\." + _WB, r"qformer.embeddings.norm.\1"),
    (_BERT + r"embeddings\.(word|position)_embeddings\.weight", r"qformer.embeddings.\1_embeddings.weight"),
    *qformer_layer_rules(_BERT + r"encoder\.layer\.(\d+)\.", "self"),
    # ITG head; its decoder weight is the (tied) word embedding matrix
    (_HEAD + r"transform\.dense\." + _WB, r"lm_head.dense.\1"),
    (_HEAD + r"transform\.LayerNorm\." + _WB, r"lm_head.norm.\1"),
    (_HEAD + r"(?:decoder\.)?bias", "lm_head.decoder.bias"),
    (_HEAD + r"decoder\.weight", "qformer.embeddings.word_embeddings.weight"),
    (r"(vision_proj|text_proj|itm_head)\." + _WB, r"\1.\2"),
    ("temp", "temp"),
    (r"(?:opt|t5)_proj\." + _WB, r"llm_proj.\1"),
    (r"(?:opt|t5)_model\.(.+)", r"llm.\1"),
)
"""LAVIS BLIP-2 keys -> ours, first full match wins."""

EXPECTED_ABSENT: dict[str, tuple[str, ...]] = {
    "generation": (r"image_encoder\.visual_encoder\..*", r"llm\..*"),
    "retrieval": (r"image_encoder\.visual_encoder\..*",),
}
"""Our keys a LAVIS checkpoint may lack: the frozen ViT (and the frozen LLM). Loaded when present."""

_POSITION_IDS = _BERT + r"embeddings\.position_ids"
IGNORED: dict[str, tuple[str, ...]] = {
    "generation": (
        _POSITION_IDS,
        r"Qformer\.cls\..*",
        _BERT + r"embeddings\.(word|position)_embeddings\..*",
        _BERT + r"encoder\.layer\.\d+\.(intermediate|output)\..*",
        r"(vision_proj|text_proj|itm_head)\..*",
        "temp",
    ),
    "retrieval": (_POSITION_IDS,),
}
"""LAVIS keys that hold nothing our model of that kind uses (a buffer; stage-1-only parts in stage 2)."""


def load_lavis_blip2(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a LAVIS BLIP-2 checkpoint into our :class:`Blip2Model` or :class:`Blip2ForGeneration` (in place).

    Args:
        model: our model, its config matching the checkpoint's (sizes, number of queries).
        source: a ``.pth`` (read with ``weights_only=True``; ``{"model": ...}`` is unwrapped), a
            safetensors file, or a state dict.
        strict: raise ``KeyError`` on missing keys (beyond :data:`EXPECTED_ABSENT`) and unexpected keys.

    Raises:
        ValueError: a shape differs (key and both shapes named).
    """
    state, name = read_source(source)
    return _load_state(model, state, name, strict)


def _load_state(model: nn.Module, state: dict[str, Tensor], name: str, strict: bool) -> LoadReport:
    kind = model_kind(model)
    state = match_qkv_bias(state, LAVIS_VIT_ATTENTION, split=has_split_qkv_bias(model))
    if "temp" in state:  # LAVIS's is 0-d; ours is (1,) since FSDP2 shards no 0-d tensors
        state = {**state, "temp": state["temp"].reshape(1)}
    return load_with_rules(
        model, state, LAVIS_BLIP2_RULES, EXPECTED_ABSENT[kind], IGNORED[kind], strict=strict, source=name
    )


def lavis_blip2_model(
    cls: type[nn.Module], config: Any, source: str | Path | dict[str, Tensor], strict: bool = True
) -> tuple[nn.Module, LoadReport]:
    """Build ``cls(config)`` for a LAVIS BLIP-2 checkpoint and load it (:func:`load_lavis_blip2`).

    A stage-2 file with a T5 (``t5_proj`` keys) gets LAVIS's ``llm_dense_act_fn`` (:data:`LAVIS_T5_ACT`)
    when ``config.llm_dense_act_fn`` is None, so that the model computes what LAVIS computes.
    """
    state, name = read_source(source)
    t5 = any(k.startswith("t5_proj.") for k in state)
    if t5 and hasattr(config, "llm_dense_act_fn") and config.llm_dense_act_fn is None:  # stage 1: no LLM
        config = replace(config, llm_dense_act_fn=LAVIS_T5_ACT)
    model = cls(config)
    return model, _load_state(model, state, name, strict)
