"""Ours -> transformers' BLIP-2: a directory that ``Blip2ForConditionalGeneration.from_pretrained``
(from our :class:`Blip2ForGeneration`) or ``Blip2ForImageTextRetrieval.from_pretrained`` (from our
:class:`Blip2Model`) loads with no missing or unexpected key and that computes what ours computes.

The export reads the import table backwards: every key of transformers' model is renamed with
:data:`~lightning_blip.weights.transformers_blip2.TRANSFORMERS_BLIP2_RULES` and filled from ours, so
the two directions cannot drift apart. Our weights that transformers has no place for must be the
ones its checkpoints are known to lack (:data:`~lightning_blip.weights.transformers_blip2.EXPECTED_ABSENT`:
the ITG head and ``temp`` of a retrieval model); anything else (e.g. a ViT with a final norm) is an
error that names the keys.

- The image token: transformers scatters the queries into ``num_query_tokens`` copies of
  ``image_token_index`` before the text, and ``Blip2Processor`` writes them as the tokenizer's
  ``<image>``, so the two must be one id (else the model never sees the image). The id is the one
  asked for, else the converted source's (``conversion.json``), else the tokenizer's ``<image>``
  (the released checkpoints' tokenizers hold it), else the first id past the tokenizer's vocabulary
  (the released LLMs' embeddings have spare rows), where the exported tokenizer gets ``<image>``.
  An ``<image>`` at another id is an error, raised before anything is written.
- ``vision_config.layer_norm_eps`` is our ViT blocks' epsilon; transformers also uses it for
  ``post_layernorm`` (our ``ln_vision``). When our ``ln_vision_eps`` differs (LAVIS's 1e-5), a
  warning says so: transformers' outputs then differ from ours by that alone.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import Blip2Config as HFBlip2Config

from lightning_blip.convert.ours_blip2 import load_converted_blip2
from lightning_blip.convert.processor import blip2_processor
from lightning_blip.weights.keymap import rename
from lightning_blip.weights.model_card import CardFacts, left_out_groups, saved_tensor_count, write_model_card
from lightning_blip.weights.transformers_blip import transformers_vision_sizes
from lightning_blip.weights.transformers_blip2 import (
    EXPECTED_ABSENT,
    OUR_VIT_ATTENTION,
    TRANSFORMERS_BLIP2_RULES,
    match_qkv_bias,
    model_kind,
    recorded_image_token_index,
)

IMAGE_TOKEN = "<image>"


def transformers_blip2_config(model: nn.Module, image_token_id: int | None = None) -> HFBlip2Config:
    """transformers' ``Blip2Config`` of our :class:`Blip2ForGeneration` or :class:`Blip2Model`."""
    kind = model_kind(model)
    config = model.config
    vit = model.image_encoder.visual_encoder.vit
    vision = {**transformers_vision_sizes(vit, config.vision.image_size), "qkv_bias": True}
    q = config.qformer
    qformer = {
        "vocab_size": q.vocab_size,
        "hidden_size": q.hidden_size,
        "num_hidden_layers": q.num_layers,
        "num_attention_heads": q.num_heads,
        "intermediate_size": q.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": q.dropout,
        "attention_probs_dropout_prob": q.attention_dropout,
        "max_position_embeddings": q.max_position_embeddings,
        "initializer_range": q.initializer_range,
        "layer_norm_eps": q.layer_norm_eps,
        "pad_token_id": q.pad_token_id,
        "cross_attention_frequency": q.cross_attention_freq,
        "encoder_hidden_size": vit.embed_dim,
        "use_qformer_text_input": kind == "retrieval",
    }
    extra = {"image_text_hidden_size": config.embed_dim} if kind == "retrieval" else {}
    if kind == "generation":
        extra = {"text_config": model.llm.config.to_dict(), "image_token_index": image_token_id}
    return HFBlip2Config(
        vision_config=vision, qformer_config=qformer, num_query_tokens=q.num_query_tokens, **extra
    )


def _image_token_id(model: nn.Module, requested: int | None) -> int:
    """``requested``, else the tokenizer's ``<image>``, else the first id past its vocabulary; the
    LLM's embeddings must have a row for it."""
    tokenizer = model.tokenizer
    token_id = requested if requested is not None else tokenizer.get_vocab().get(IMAGE_TOKEN, len(tokenizer))
    rows = model.llm.get_input_embeddings().weight.shape[0]
    if not 0 <= token_id < rows:
        raise ValueError(
            f"transformers' image token {token_id} has no row among the LLM's {rows} embedding rows: "
            f"give the LLM spare rows (model.llm.resize_token_embeddings) or pass an image_token_id "
            f"below {rows} that the tokenizer's {IMAGE_TOKEN} can take"
        )
    return token_id


def _tokenizer_with_image_token(tokenizer, token_id: int):
    """A copy of ``tokenizer`` whose ``<image>`` is ``token_id`` (added where absent).

    Raises:
        ValueError: ``<image>`` is (or would be added as) another id.
    """
    tokenizer = copy.deepcopy(tokenizer)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    got = tokenizer.get_vocab()[IMAGE_TOKEN]
    if got != token_id:
        raise ValueError(
            f"the exported tokenizer's {IMAGE_TOKEN} would be id {got} but image_token_index is {token_id}: "
            f"transformers' BLIP-2 would then never put the image into its inputs; export with "
            f"image_token_id={got} or a tokenizer whose {IMAGE_TOKEN} is {token_id}"
        )
    return tokenizer


def transformers_state_dict(model: nn.Module, hf_model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """``hf_model``'s state dict filled from ours through the import table (tensors shared, not copied),
    and our keys it leaves out (those transformers' checkpoints lack).

    Raises:
        KeyError: a transformers key has no counterpart in ours, or a weight of ours (beyond what
            transformers' checkpoints lack) has no place in transformers' model; both named.
        ValueError: a shape differs (key and both shapes named).
    """
    kind = model_kind(model)
    ours = match_qkv_bias(model.state_dict(), OUR_VIT_ATTENTION, split=False)
    state: dict[str, Tensor] = {}
    no_source: list[str] = []
    for key, target in hf_model.state_dict().items():
        name = rename(key, TRANSFORMERS_BLIP2_RULES)
        if name not in ours:
            no_source.append(key)
            continue
        if ours[name].shape != target.shape:
            raise ValueError(
                f"transformers' {key!r} has shape {tuple(target.shape)}, ours {name!r} {tuple(ours[name].shape)}"
            )
        state[key] = ours[name]
    # a tied weight of ours (the ITG head's decoder = the word embeddings) goes out under one name
    exported = {(t.data_ptr(), t.shape) for t in state.values()}
    absent = [re.compile(p) for p in EXPECTED_ABSENT[kind]]
    dropped = [
        k
        for k, t in ours.items()
        if (t.data_ptr(), t.shape) not in exported and not any(p.fullmatch(k) for p in absent)
    ]
    if no_source or dropped:
        raise KeyError(
            f"transformers keys without a weight of ours: {no_source}; our weights transformers has no "
            f"place for: {dropped}"
        )
    left_out = [k for k, t in ours.items() if (t.data_ptr(), t.shape) not in exported]
    return state, left_out


def export_blip2_to_transformers(
    model: nn.Module, out_dir: str | Path, image_token_id: int | None = None, source: str | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for transformers' BLIP-2, and for a generation
    model the ``Blip2Processor`` files (our image preprocessing, the LLM's tokenizer, ``num_query_tokens``).

    Args:
        model: our :class:`Blip2ForGeneration` (-> ``Blip2ForConditionalGeneration``) or
            :class:`Blip2Model` (-> ``Blip2ForImageTextRetrieval``).
        out_dir: the directory to write.
        image_token_id: transformers' image token (generation only); default: the tokenizer's
            ``<image>``, else the first id past the tokenizer's vocabulary.
        source: the checkpoint the model came from, named in the ``README.md`` model card.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: the exported tokenizer's ``<image>`` cannot be ``image_token_index`` (the ids
            named), or the LLM's embeddings have no row for it.
    """
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    kind = model_kind(model)
    out = Path(out_dir)
    processor = None
    if kind == "generation":
        image_token_id = _image_token_id(model, image_token_id)
        tokenizer = _tokenizer_with_image_token(model.tokenizer, image_token_id)
        q = model.config.qformer.num_query_tokens
        processor = blip2_processor(tokenizer, model.config.vision.image_size, q)
    config = transformers_blip2_config(model, image_token_id)
    if config.vision_config.layer_norm_eps != model.image_encoder.ln_vision.eps:
        warnings.warn(
            f"transformers uses one LayerNorm epsilon for the ViT blocks and post_layernorm: "
            f"{config.vision_config.layer_norm_eps} (our blocks'); our ln_vision uses "
            f"{model.image_encoder.ln_vision.eps}, so the exported model's outputs differ slightly",
            stacklevel=2,
        )
    cls = Blip2ForConditionalGeneration if kind == "generation" else Blip2ForImageTextRetrieval
    with torch.device("meta"):
        hf_model = cls(config)
    state, left_out = transformers_state_dict(model, hf_model)
    hf_model.load_state_dict(state, strict=True, assign=True)
    hf_model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(str(out))
    notes = []
    if kind == "generation":
        notes = [
            (
                f"Ours generates after the prompt {model.config.prompt!r} and stops at the token ids "
                f"{list(model._eos_ids)}: pass `eos_token_id={list(model._eos_ids)}` (and the prompt as `text`) "
                "to transformers' `generate` to stop where ours does; no `generation_config.json` is written."
            )
        ]
    facts = CardFacts(
        cls.__name__, source, saved_tensor_count(out), left_out_groups(left_out, EXPECTED_ABSENT[kind]), notes
    )
    write_model_card(out, facts)
    return out


def export_transformers_blip2(
    our_dir_or_model: str | Path | nn.Module,
    output_dir: str | Path,
    image_token_id: int | None = None,
    source: str | None = None,
) -> Path:
    """Export a :func:`~lightning_blip.convert.ours_blip2.convert_transformers_blip2` directory
    (or a model) with :func:`export_blip2_to_transformers`; returns ``output_dir``.

    ``image_token_id``: default, for a directory, the source's ``image_token_index`` it recorded.
    """
    model = our_dir_or_model
    if not isinstance(model, nn.Module):
        if image_token_id is None:
            image_token_id = recorded_image_token_index(model)
        model, source = load_converted_blip2(model), str(our_dir_or_model)
    return export_blip2_to_transformers(model, output_dir, image_token_id, source)
