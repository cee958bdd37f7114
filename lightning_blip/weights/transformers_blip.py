"""transformers' BLIP (``BlipForConditionalGeneration``, ``BlipForImageTextRetrieval``,
``BlipVisionModel``) -> our :class:`~lightning_blip.models.blip.model.BlipModel`.

Which checkpoint gives which part. Our ``BlipModel`` is BLIP's MED: one text transformer whose
encoder modes and decoder mode share everything but the self-attention. transformers splits BLIP by
task, as the released BLIP fine-tunes are split:

- ``BlipForImageTextRetrieval`` (``text_encoder.*``): ViT, the encoder self-attention, the shared
  embeddings / cross-attention / FFN, ``vision_proj``, ``text_proj``, ``itm_head``. Absent as
  expected: the decoder self-attention and the LM head.
- ``BlipForConditionalGeneration`` (``text_decoder.*``): ViT, the decoder self-attention, the shared
  parts, the LM head. Absent as expected: the encoder self-attention and the ITC/ITM heads.
- ``BlipVisionModel`` (keys without ``vision_model.``): the ViT only.

Load the checkpoint of the task you run: the loaded model then computes exactly what the
transformers model computes (``tests/weights/test_blip_transformers_parity.py``). The two released
checkpoints of a size were fine-tuned apart, so their ViTs and shared text weights differ: loading
one after the other into one model keeps the second's shared weights, which matches neither task's
fine-tune; a checkpoint with both a ``text_encoder`` and a ``text_decoder``
(``BlipForQuestionAnswering``, separate networks) is refused here: it is a
:class:`~lightning_blip.models.blip.vqa.BlipVQA`
(:func:`~lightning_blip.weights.transformers_blip_vqa.load_transformers_blip_vqa`). ``temp`` is in
neither: it keeps its value.

[CLS] vs [ENC]: ``BlipForImageTextRetrieval`` runs its ITM pass on the ids as given (its processor
starts them with [CLS]); BLIP's image-grounded encoder, and our ``BlipModel.itm_logits``, replace
the first token by [ENC] (30523). Our ITM scores of a transformers checkpoint are therefore BLIP's,
and equal transformers' when transformers is given ids that start with [ENC]. The unimodal ITC pass
uses [CLS] on both sides; the decoder replaces the first token by [DEC] (30522) on both sides in
``generate``, while transformers' captioning ``forward`` uses the ids as given (pass [DEC] first).
transformers' ``generate`` drops the last prompt id (the processor's [SEP]); our
:func:`~lightning_blip.models.shared.generation.generate_ids` takes the prompt without it. Greedy and beam
search then give the same ids (min/max length count the prompt on both sides), except that beam
search with a length penalty other than 0 can rank hypotheses differently: transformers 5 counts
only the generated tokens ([SEP] included), BLIP's transformers 4.15 (and ours) the tokens before
[SEP], prompt included.

Layer-norm epsilon: transformers' BLIP vision configs say 1e-5 (transformers' default, kept by the
released configs), BLIP's ViT (and timm's) uses 1e-6; the converted config takes the source's value
(``VisionConfig.layer_norm_eps``, every LayerNorm of the ViT).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.keymap import LoadReport, Rule, load_with_rules

_VIT = r"vision_model\.embeddings\."
_BLOCK = r"vision_model\.encoder\.layers\.(\d+)\."
_OUR_BLOCK = r"visual_encoder.vit.blocks.\1."
_TEXT = r"(?:text_encoder|text_decoder\.bert)\."
_LAYER = _TEXT + r"encoder\.layer\.(\d+)\."
_ENC_SA = r"text_encoder\.encoder\.layer\.(\d+)\.attention\."
_DEC_SA = r"text_decoder\.bert\.encoder\.layer\.(\d+)\.attention\."
_WB = r"(weight|bias)"

VISION_RULES: tuple[Rule, ...] = (
    # BlipVisionModel -> timm ViT (fused qkv on both sides, pre-norm blocks)
    (_VIT + "class_embedding", "visual_encoder.vit.cls_token"),
    (_VIT + "position_embedding", "visual_encoder.vit.pos_embed"),
    (_VIT + r"patch_embedding\." + _WB, r"visual_encoder.vit.patch_embed.proj.\1"),
    (_BLOCK + r"self_attn\.qkv\." + _WB, _OUR_BLOCK + r"attn.qkv.\2"),
    (_BLOCK + r"self_attn\.projection\." + _WB, _OUR_BLOCK + r"attn.proj.\2"),
    (_BLOCK + r"layer_norm([12])\." + _WB, _OUR_BLOCK + r"norm\2.\3"),
    (_BLOCK + r"mlp\.(fc[12])\." + _WB, _OUR_BLOCK + r"mlp.\2.\3"),
    (r"vision_model\.post_layernorm\." + _WB, r"visual_encoder.vit.norm.\1"),
)
"""transformers' BLIP vision keys -> ours."""

BERT_TEXT_RULES: tuple[Rule, ...] = (
    # BERT body of the retrieval encoder or of the captioning decoder -> the MED text model
    (_TEXT + r"embeddings\.(word|position)_embeddings\.weight", r"text.embeddings.\1_embeddings.weight"),
    (_TEXT + r"embeddings\.LayerNorm\." + _WB, r"text.embeddings.norm.\1"),
    # self-attention: the encoder's goes to self_attn, the decoder's to decoder_self_attn
    (_ENC_SA + r"self\.query\." + _WB, r"text.layers.\1.self_attn.attention.query.\2"),
    (_ENC_SA + r"self\.(key|value)\." + _WB, r"text.layers.\1.self_attn.attention.kv.\2.\3"),
    (_ENC_SA + r"output\.dense\." + _WB, r"text.layers.\1.self_attn.dense.\2"),
    (_ENC_SA + r"output\.LayerNorm\." + _WB, r"text.layers.\1.self_attn.norm.\2"),
    (_DEC_SA + r"self\.query\." + _WB, r"text.layers.\1.decoder_self_attn.attention.query.\2"),
    (_DEC_SA + r"self\.(key|value)\." + _WB, r"text.layers.\1.decoder_self_attn.attention.kv.\2.\3"),
    (_DEC_SA + r"output\.dense\." + _WB, r"text.layers.\1.decoder_self_attn.dense.\2"),
    (_DEC_SA + r"output\.LayerNorm\." + _WB, r"text.layers.\1.decoder_self_attn.norm.\2"),
    # shared by encoder and decoder: cross-attention and FFN
    (_LAYER + r"crossattention\.self\.query\." + _WB, r"text.layers.\1.cross_attn.attention.query.\2"),
    (_LAYER + r"crossattention\.self\.(key|value)\." + _WB, r"text.layers.\1.cross_attn.attention.kv.\2.\3"),
    (_LAYER + r"crossattention\.output\.dense\." + _WB, r"text.layers.\1.cross_attn.dense.\2"),
    (_LAYER + r"crossattention\.output\.LayerNorm\." + _WB, r"text.layers.\1.cross_attn.norm.\2"),
    (_LAYER + r"intermediate\.dense\." + _WB, r"text.layers.\1.ffn.intermediate.\2"),
    (_LAYER + r"output\.dense\." + _WB, r"text.layers.\1.ffn.output.\2"),
    (_LAYER + r"output\.LayerNorm\." + _WB, r"text.layers.\1.ffn.norm.\2"),
    # LM head; decoder.weight/bias are tied to the word embeddings / predictions.bias in transformers
    (r"text_decoder\.cls\.predictions\.transform\.dense\." + _WB, r"lm_head.dense.\1"),
    (r"text_decoder\.cls\.predictions\.transform\.LayerNorm\." + _WB, r"lm_head.norm.\1"),
    (r"text_decoder\.cls\.predictions\.(?:decoder\.)?bias", "lm_head.decoder.bias"),
    (r"text_decoder\.cls\.predictions\.decoder\.weight", "text.embeddings.word_embeddings.weight"),
    # retrieval heads
    (r"(vision_proj|text_proj|itm_head)\." + _WB, r"\1.\2"),
)
"""BLIP's BERT-named text transformer and heads -> ours. transformers' BLIP text model is a port of
salesforce/BLIP's ``med.py`` and keeps its names, so the salesforce/LAVIS table reuses these rules."""

TRANSFORMERS_BLIP_RULES: tuple[Rule, ...] = VISION_RULES + BERT_TEXT_RULES
"""transformers' BLIP keys -> ours, first full match wins."""

EXPECTED_ABSENT: dict[str, tuple[str, ...]] = {
    "retrieval": (r"text\.layers\.\d+\.decoder_self_attn\..*", r"lm_head\..*", "temp"),
    "captioning": (r"text\.layers\.\d+\.self_attn\..*", r"(vision_proj|text_proj|itm_head)\..*", "temp"),
    "vision": (r"(?!visual_encoder\.).*",),
}
"""Our keys that each kind of transformers checkpoint does not hold (regexes over whole keys)."""

IGNORED: tuple[str, ...] = (r"(?:text_encoder|text_decoder\.bert)\.embeddings\.position_ids",)
"""Source keys that hold no weights: the ``position_ids`` buffer older transformers versions saved."""

_VISION_MODEL_KEYS = ("embeddings.", "encoder.layers.", "post_layernorm.")

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
"""The weights of a ``save_pretrained`` directory, first found wins: a ``.index.json`` maps each key
to its shard file (read like the unsharded file of its format)."""


def checkpoint_kind(state: dict[str, Tensor]) -> str:
    """``"retrieval"``, ``"captioning"`` or ``"vision"`` from the keys of a transformers BLIP state dict."""
    encoder = any(k.startswith("text_encoder.") for k in state)
    decoder = any(k.startswith("text_decoder.") for k in state)
    if encoder and decoder:
        raise ValueError(
            "this transformers checkpoint has both a text_encoder and a text_decoder (as "
            "BlipForQuestionAnswering): they are separate networks, not one MED; load it into a BlipVQA "
            "with load_transformers_blip_vqa"
        )
    return "retrieval" if encoder else "captioning" if decoder else "vision"


def bert_fields_from_transformers(t) -> dict:
    """The BERT-shaped fields that our ``MEDConfig`` and ``QFormerConfig`` share, from a transformers
    BLIP text or BLIP-2 Q-Former config ``t``."""
    return {
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "num_layers": t.num_hidden_layers,
        "num_heads": t.num_attention_heads,
        "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_position_embeddings,
        "dropout": t.hidden_dropout_prob,
        "attention_dropout": t.attention_probs_dropout_prob,
        "layer_norm_eps": t.layer_norm_eps,
        "pad_token_id": t.pad_token_id,
    }


def transformers_vision_sizes(vit: nn.Module, image_size: int) -> dict:
    """The fields of a transformers BLIP / BLIP-2 vision config, read from our timm ``vit``."""
    block = vit.blocks[0]
    return {
        "hidden_size": vit.embed_dim,
        "intermediate_size": block.mlp.fc1.out_features,
        "num_hidden_layers": len(vit.blocks),
        "num_attention_heads": block.attn.num_heads,
        "image_size": image_size,
        "patch_size": vit.patch_embed.patch_size[0],
        "layer_norm_eps": block.norm1.eps,
        "hidden_act": "gelu",
    }


def read_transformers_state_dict(
    directory: str | Path, keep: Callable[[str], bool] | None = None
) -> dict[str, Tensor]:
    """The state dict of a ``save_pretrained`` directory (safetensors or torch files, sharded or not).

    ``keep``: only the names it accepts (from safetensors, only those tensors are read; shards that
    hold none of them are not opened).
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if not (directory / name).is_file():
            continue
        if not name.endswith(".index.json"):
            return load_state_dict_file(directory / name, keep)
        weight_map = json.loads((directory / name).read_text())["weight_map"]
        shards = sorted({shard for key, shard in weight_map.items() if keep is None or keep(key)})
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_state_dict_file(directory / shard, keep))
        return state
    raise FileNotFoundError(f"none of {', '.join(WEIGHT_FILES)} in {directory}")


def read_source(
    source: str | Path | dict[str, Tensor], keep: Callable[[str], bool] | None = None
) -> tuple[dict[str, Tensor], str]:
    """``(state dict, name for messages)`` of a ``save_pretrained`` directory, a weights file or a
    state dict; ``keep``: only the names it accepts."""
    if isinstance(source, dict):
        return (source if keep is None else {k: t for k, t in source.items() if keep(k)}), "state dict"
    path = Path(source)
    state = read_transformers_state_dict(path, keep) if path.is_dir() else load_state_dict_file(path, keep)
    return state, str(path)


def load_transformers_blip(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a transformers BLIP checkpoint into our ``BlipModel`` (in place).

    Args:
        model: a :class:`~lightning_blip.models.blip.model.BlipModel` whose config matches the checkpoint's.
        source: a ``save_pretrained`` directory, a weights file, or a state dict.
        strict: raise ``KeyError`` on missing keys (beyond those the kind of checkpoint lacks, see
            :data:`EXPECTED_ABSENT`) and on unexpected keys.

    Returns:
        The :class:`~lightning_blip.weights.keymap.LoadReport`.

    Raises:
        ValueError: a shape differs (key and both shapes named), or the checkpoint is not one MED.
    """
    state, name = read_source(source)
    if "vision_model.post_layernorm.weight" not in state and "post_layernorm.weight" in state:
        state = {f"vision_model.{k}" if k.startswith(_VISION_MODEL_KEYS) else k: v for k, v in state.items()}
    kind = checkpoint_kind(state)
    return load_with_rules(
        model, state, TRANSFORMERS_BLIP_RULES, EXPECTED_ABSENT[kind], IGNORED, strict=strict, source=name
    )
