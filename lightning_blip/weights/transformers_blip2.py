"""transformers' BLIP-2 (``Blip2ForConditionalGeneration``, ``Blip2ForImageTextRetrieval``) -> ours.

- ``Blip2ForConditionalGeneration`` (OPT, T5 or any other LM as ``language_model``) ->
  :class:`~lightning_blip.models.blip2.llm.Blip2ForGeneration`: the ViT, ``ln_vision``, the queries
  and the Q-Former's query path, ``llm_proj`` (transformers' ``language_projection``) and the LLM.
- ``Blip2ForImageTextRetrieval`` -> :class:`~lightning_blip.models.blip2.model.Blip2Model`: the ViT,
  ``ln_vision``, the Q-Former with its text embeddings and text FFN, the ITC projections and the
  ITM head. Absent as expected: the ITG LM head (``lm_head``, but for its decoder weight, which is
  the word embedding matrix) and ``temp``.

Where transformers keeps what:

- LAVIS's ``ln_vision`` is transformers' ``vision_model.post_layernorm``. Its epsilon is the
  vision config's ``layer_norm_eps`` (1e-6 by default), shared with every ViT block norm; LAVIS runs
  ``ln_vision`` with 1e-5. Our config builder copies transformers' value into ``ln_vision_eps`` and
  the ViT's ``layer_norm_eps`` so that the converted model computes what transformers computes, and
  notes an ``ln_vision`` epsilon other than LAVIS's.
- The EVA ViT's attention has a fused ``qkv`` weight without bias and separate ``q_bias`` /
  ``v_bias`` (no key bias) in LAVIS and timm's ``Eva``; transformers (and timm's plain ViT) hold one
  fused bias ``[q_bias, 0, v_bias]``. :func:`match_qkv_bias` converts between the two; a non-zero
  key bias is dropped when splitting, which changes nothing (it adds the same score to a whole row).
- The Q-Former's embedding LayerNorm is ``qformer.layernorm`` (applied to ``[queries; text]``, as
  ours); the text word/position embeddings are the retrieval model's top-level ``embeddings``; the
  queries are the top-level ``query_tokens`` (ours: ``qformer.query_tokens``).
- The LLM is ``language_model.*`` with the LLM's own key names (ours: ``llm.*``).

Behaviour that differs from LAVIS (and from our :class:`Blip2ForGeneration`):

- Inputs: transformers puts ``num_query_tokens`` copies of an image token before the text
  (``[<image> x Q, BOS, prompt]`` for OPT: the processor's tokenizer adds BOS; ``[<image> x Q,
  prompt, EOS]`` for T5) and scatters the projected queries into them. LAVIS and ours build
  ``[queries; BOS + prompt]`` / ``[queries; prompt + EOS]`` directly, so equal ids give equal
  logits. Without ``input_ids``, transformers' ``generate`` uses ``[<image> x Q, BOS]``: the OPT BOS
  as ours; for T5 it also puts T5's (absent) BOS id there, where LAVIS's empty prompt gives EOS.
- Stopping: LAVIS's OPT (and ours) stops at a newline as well as at EOS; transformers stops at EOS
  only unless ``eos_token_id=[eos, newline]`` is passed to ``generate``.
- Decoder-only ``generate`` returns the prompt ids (image tokens included) before the new tokens;
  ours decodes the new tokens only.
- ITM: transformers' ``Blip2ForImageTextRetrieval`` feeds the ids as given ([CLS] first), as LAVIS
  and our ``itm_logits`` do (no [ENC] in BLIP-2).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import Blip2Config as HFBlip2Config

from lightning_blip.weights.keymap import LoadReport, Rule, load_own_state, load_with_rules
from lightning_blip.weights.transformers_blip import (
    read_source,
)

_WB = r"(weight|bias)"
_OUR_VIT = "image_encoder.visual_encoder.vit."
_VB = r"vision_model\.encoder\.layers\.(\d+)\."
VIT_ATTENTION = _VB + r"self_attn\."
"""transformers' ViT attention prefix (the ``q_bias`` / ``v_bias`` / ``qkv.bias`` owner)."""
OUR_VIT_ATTENTION = r"image_encoder\.visual_encoder\.vit\.blocks\.\d+\.attn\."


def qformer_layer_rules(layer: str, attention: str) -> tuple[Rule, ...]:
    """Rules of one BERT-named Q-Former layer to ours.

    Args:
        layer: regex of a layer's prefix with its index as group 1 (``...encoder\\.layer\\.(\\d+)\\.``).
        attention: the attention module's inner name: ``attention`` in transformers, ``self`` in
            BERT / LAVIS (``layer.N.attention.self.query``).
    """
    ours = r"qformer.layers.\1."
    rules: list[Rule] = []
    for theirs, our in (("attention", "self_attn"), ("crossattention", "cross_attn")):
        inner = layer + theirs + r"\." + attention + r"\."
        rules += [
            (inner + r"query\." + _WB, ours + our + r".attention.query.\2"),
            (inner + r"(key|value)\." + _WB, ours + our + r".attention.kv.\2.\3"),
            (layer + theirs + r"\.output\.dense\." + _WB, ours + our + r".dense.\2"),
            (layer + theirs + r"\.output\.LayerNorm\." + _WB, ours + our + r".norm.\2"),
        ]
    for suffix, our in (("_query", "ffn_query"), ("", "ffn")):
        rules += [
            (layer + "intermediate" + suffix + r"\.dense\." + _WB, ours + our + r".intermediate.\2"),
            (layer + "output" + suffix + r"\.dense\." + _WB, ours + our + r".output.\2"),
            (layer + "output" + suffix + r"\.LayerNorm\." + _WB, ours + our + r".norm.\2"),
        ]
    return tuple(rules)


TRANSFORMERS_BLIP2_RULES: tuple[Rule, ...] = (
    # vision: Blip2VisionModel (EVA ViT) -> timm ViT; post_layernorm is LAVIS's ln_vision
    (r"vision_model\.embeddings\.class_embedding", _OUR_VIT + "cls_token"),
    (r"vision_model\.embeddings\.position_embedding", _OUR_VIT + "pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\." + _WB, _OUR_VIT + r"patch_embed.proj.\1"),
    (VIT_ATTENTION + r"qkv\." + _WB, _OUR_VIT + r"blocks.\1.attn.qkv.\2"),
    (VIT_ATTENTION + r"(q_bias|v_bias)", _OUR_VIT + r"blocks.\1.attn.\2"),
    (VIT_ATTENTION + r"projection\." + _WB, _OUR_VIT + r"blocks.\1.attn.proj.\2"),
    (_VB + r"layer_norm([12])\." + _WB, _OUR_VIT + r"blocks.\1.norm\2.\3"),
    (_VB + r"mlp\.(fc[12])\." + _WB, _OUR_VIT + r"blocks.\1.mlp.\2.\3"),
    (r"vision_model\.post_layernorm\." + _WB, r"image_encoder.ln_vision.\1"),
    # Q-Former
    ("query_tokens", "qformer.query_tokens"),
    (r"qformer\.layernorm\." + _WB, r"qformer.embeddings.norm.\1"),
    (r"embeddings\.(word|position)_embeddings\.weight", r"qformer.embeddings.\1_embeddings.weight"),
    *qformer_layer_rules(r"qformer\.encoder\.layer\.(\d+)\.", "attention"),
    # heads
    (r"vision_projection\." + _WB, r"vision_proj.\1"),
    (r"text_projection\." + _WB, r"text_proj.\1"),
    (r"itm_head\." + _WB, r"itm_head.\1"),
    (r"language_projection\." + _WB, r"llm_proj.\1"),
    (r"language_model\.(.+)", r"llm.\1"),
)
"""transformers' BLIP-2 keys -> ours, first full match wins."""

UNUSED_VIT = r"image_encoder\.visual_encoder\.vit\.fc_norm\..*"
"""timm's ``Eva`` pooling norm: our encoder returns every token and never applies it."""

EXPECTED_ABSENT: dict[str, tuple[str, ...]] = {
    "generation": (UNUSED_VIT,),
    "retrieval": (UNUSED_VIT, r"lm_head\.(dense|norm)\..*", r"lm_head\.decoder\.bias", "temp"),
}
"""Our keys that each kind of transformers checkpoint does not hold (regexes over whole keys)."""

IGNORED: dict[str, tuple[str, ...]] = {
    # stage-1-only parts (text embeddings, text FFN, ITC/ITM heads) that our stage-2 model drops
    "generation": (
        r"embeddings\..*",
        r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\..*",
        r"(vision_projection|text_projection|itm_head)\..*",
    ),
    "retrieval": (r"embeddings\.position_ids",),
}
"""Source keys that hold nothing our model of that kind uses."""


def model_kind(model: nn.Module) -> str:
    """``"generation"`` (:class:`Blip2ForGeneration`) or ``"retrieval"`` (:class:`Blip2Model`)."""
    # told by the modules each holds: this package imports no model class
    if hasattr(model, "llm") and hasattr(model, "llm_proj"):
        return "generation"
    if hasattr(model, "qformer") and hasattr(model, "itm_head"):
        return "retrieval"
    raise TypeError(f"expected a Blip2ForGeneration or a Blip2Model, got {type(model).__name__}")


def has_split_qkv_bias(model: nn.Module) -> bool:
    """Whether our ViT holds ``attn.q_bias`` / ``attn.v_bias`` (timm's ``Eva``) instead of ``attn.qkv.bias``."""
    return any(re.fullmatch(OUR_VIT_ATTENTION + "q_bias", k) for k in model.state_dict())


def match_qkv_bias(state: dict[str, Tensor], attention: str, split: bool) -> dict[str, Tensor]:
    """The ViT attention biases of ``state`` in one layout: split (``q_bias``, ``v_bias``) or fused.

    ``attention``: regex of an attention module's key prefix. Fused is ``[q_bias, 0, v_bias]``
    ``(3D,)``; splitting drops the key part (softmax ignores a bias shared by a whole row). Other
    keys pass unchanged; a ``q_bias`` without its ``v_bias`` is left as it is.
    """
    pattern = re.compile(f"(?P<prefix>{attention})(?P<name>qkv\\.bias|q_bias|v_bias)")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = pattern.fullmatch(key)
        prefix, name = (match["prefix"], match["name"]) if match else ("", "")
        pair = prefix + "q_bias" in state and prefix + "v_bias" in state
        if split and name == "qkv.bias":
            out[prefix + "q_bias"], out[prefix + "v_bias"] = value.chunk(3)[::2]
        elif not split and pair and name == "q_bias":
            out[prefix + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), state[prefix + "v_bias"]])
        elif split or not pair or name not in ("q_bias", "v_bias"):
            out[key] = value
    return out


def load_transformers_blip2(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True, llm_loaded: bool = False
) -> LoadReport:
    """Load a transformers BLIP-2 checkpoint into our model (in place).

    Args:
        model: a :class:`Blip2ForGeneration` (from ``Blip2ForConditionalGeneration``) or a
            :class:`Blip2Model` (from ``Blip2ForImageTextRetrieval``) whose config matches the
            checkpoint's (:func:`blip2_config_from_transformers`).
        source: a ``save_pretrained`` directory, a weights file, or a state dict.
        strict: raise ``KeyError`` on missing keys (beyond :data:`EXPECTED_ABSENT`) and unexpected keys.
        llm_loaded: the model's LLM already holds this source's ``language_model.*`` (its
            ``config.llm`` is this directory): those weights are neither read nor loaded again.

    Raises:
        ValueError: a shape differs (key and both shapes named).
    """
    kind = model_kind(model)
    state, name = read_source(source, (lambda k: not k.startswith("language_model.")) if llm_loaded else None)
    state = match_qkv_bias(state, VIT_ATTENTION, split=has_split_qkv_bias(model))
    return load_with_rules(
        model,
        state,
        TRANSFORMERS_BLIP2_RULES,
        EXPECTED_ABSENT[kind] + ((r"llm\..*",) if llm_loaded else ()),
        IGNORED[kind],
        strict=strict,
        source=name,
    )


def read_transformers_blip2_config(directory: str | Path) -> HFBlip2Config:
    """transformers' ``Blip2Config`` of a directory, defaults filled in."""
    return HFBlip2Config.from_pretrained(str(directory), local_files_only=True)


def checkpoint_kind(hf_config: HFBlip2Config) -> str:
    """``"generation"`` or ``"retrieval"`` from a transformers BLIP-2 config's ``architectures``."""
    architectures = hf_config.architectures or []
    if "Blip2ForImageTextRetrieval" in architectures:
        return "retrieval"
    if "Blip2ForConditionalGeneration" in architectures:
        return "generation"
    raise ValueError(
        f"config.json names {architectures}: expected Blip2ForConditionalGeneration or Blip2ForImageTextRetrieval"
    )


def write_llm_directory(source: str | Path, state: dict[str, Tensor], output: str | Path) -> Path:
    """Write the ``language_model.*`` weights of a ``Blip2ForConditionalGeneration`` as a plain LLM.

    ``output`` gets the text config, ``model.safetensors`` and the tokenizer of ``source`` (a
    transformers BLIP-2 repository holds one), loadable with ``AutoModelFor*.from_pretrained``.
    """
    from transformers import AutoTokenizer

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    read_transformers_blip2_config(source).text_config.save_pretrained(output)
    prefix = "language_model."
    weights = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    save_file(weights, output / "model.safetensors", metadata={"format": "pt"})
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{source} holds no tokenizer for its language model: {err}") from err
    tokenizer.save_pretrained(output)
    return output


def recorded_image_token_index(directory: str | Path) -> int | None:
    """The source's ``image_token_index`` that :func:`convert_transformers_blip2` kept in
    ``directory``'s ``conversion.json``; None where there is none (another format, a file)."""
    summary = Path(directory) / "conversion.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("image_token_index")


def save_our_blip2(model: nn.Module, output: Path) -> None:
    """``config.json`` and ``model.safetensors`` (the LLM left out: it is ``config.llm``) of our model."""
    # clone: safetensors refuses tensors that share memory (the LM head's tied word embeddings)
    weights = {
        k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("llm.")
    }
    save_file(weights, output / "model.safetensors")
    (output / "config.json").write_text(json.dumps(asdict(model.config), indent=2))


def load_our_blip2(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load the weights :func:`save_our_blip2` writes (a file or a state dict) into our model (in place).

    The LLM's weights (``llm.*``) are absent as expected: the model took them from ``config.llm``.

    Raises:
        KeyError: ``strict`` and keys are missing (beyond the LLM's) or unexpected (named).
        ValueError: a shape differs (key and both shapes named).
    """
    state, name = read_source(source)
    return load_own_state(model, state, ("llm.",), strict, name)
