"""Our BLIP models -> transformers ``save_pretrained`` directories (``config.json`` + ``model.safetensors``).

- :class:`~lightning_blip.models.blip.model.BlipModel` -> ``BlipForConditionalGeneration`` (task
  ``"captioning"``: ViT, decoder self-attention, shared layers, LM head) or
  ``BlipForImageTextRetrieval`` (``"retrieval"``: ViT, encoder self-attention, shared layers,
  ``vision_proj``, ``text_proj``, ``itm_head``). ``temp`` has no place in either (transformers'
  retrieval ITC score is the plain cosine similarity) and is left out.
- :class:`~lightning_blip.models.blip.vqa.BlipVQA` -> ``BlipForQuestionAnswering``.

No second table: the names come from the import tables
(:data:`~lightning_blip.weights.transformers_blip.TRANSFORMERS_BLIP_RULES`,
:data:`~lightning_blip.weights.transformers_blip_vqa.TRANSFORMERS_BLIP_VQA_RULES`) applied to the
keys of the transformers class itself (built on the meta device), which inverts them: every
transformers key must map to one of our weights of the same shape, and every weight of ours left
out must be one that the import lists as absent from that kind of checkpoint. Tied weights are
written once (the LM head's decoder weight is the word embeddings; transformers re-ties on load).

Written into ``config.json``: the ViT's LayerNorm epsilon (1e-6 in BLIP; transformers' default is
1e-5; a converted model keeps its source's) and every size read from the model itself. transformers' ITM uses the ids as given
while ours replaces [CLS] by [ENC]: the exported model gives our ITM scores when fed [ENC]-first ids.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lightning_blip.convert.processor import blip_processor
from lightning_blip.models.blip import BlipModel, BlipVQA
from lightning_blip.weights.keymap import rename
from lightning_blip.weights.model_card import CardFacts, left_out_groups, saved_tensor_count, write_model_card
from lightning_blip.weights.transformers_blip import (
    EXPECTED_ABSENT,
    TRANSFORMERS_BLIP_RULES,
    transformers_vision_sizes,
)
from lightning_blip.weights.transformers_blip_vqa import TRANSFORMERS_BLIP_VQA_RULES

TRANSFORMERS_CLASSES = {
    "captioning": "BlipForConditionalGeneration",
    "retrieval": "BlipForImageTextRetrieval",
    "vqa": "BlipForQuestionAnswering",
}
"""Our task -> the transformers class it is exported as."""


def transformers_config(model: BlipModel | BlipVQA):
    """transformers' ``BlipConfig`` for our model, with sizes read from the model's modules."""
    from transformers import BlipConfig as HFBlipConfig

    cfg = model.config
    vision = transformers_vision_sizes(model.visual_encoder.vit, cfg.vision.image_size)
    t = cfg.text
    text = {
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "encoder_hidden_size": model.visual_encoder.vit.embed_dim,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.max_position_embeddings,
        "layer_norm_eps": t.layer_norm_eps,
        "hidden_dropout_prob": t.dropout,
        "attention_probs_dropout_prob": t.attention_dropout,
        "hidden_act": "gelu",
        "bos_token_id": cfg.bos_token_id,
        "sep_token_id": cfg.sep_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    return HFBlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=cfg.embed_dim)


def export_transformers_blip(
    model: BlipModel | BlipVQA, output: str | Path, task: str | None = None, source: str | None = None
) -> Path:
    """Write ``model`` as a transformers BLIP directory that ``from_pretrained`` loads with no missing
    or unexpected keys, with the ``BlipProcessor`` files of our preprocessing
    (:func:`~lightning_blip.convert.processor.blip_processor`).

    Args:
        model: a ``BlipModel`` (``task`` "captioning" or "retrieval") or a ``BlipVQA`` (``task`` None
            or "vqa").
        output: the directory to write.
        source: the checkpoint the model came from, named in the ``README.md`` model card.

    Raises:
        ValueError: a wrong task, a weight transformers' class has no place for (e.g. a ViT without
            its final norm), a shape that differs (key named), or a ``BlipVQA`` whose ViT width
            differs from its text width (transformers' answer decoder would read the question with
            the ViT's width).
    """
    import transformers

    if isinstance(model, BlipVQA):
        if task not in (None, "vqa"):
            raise ValueError(f"a BlipVQA exports as task 'vqa', not {task!r}")
        task, rules, absent = "vqa", TRANSFORMERS_BLIP_VQA_RULES, ()
        if model.visual_encoder.width != model.config.text.hidden_size:
            raise ValueError(
                f"BlipForQuestionAnswering needs the ViT width ({model.visual_encoder.width}) to equal the "
                f"text width ({model.config.text.hidden_size}): its answer decoder reads the question with it"
            )
    elif task in ("captioning", "retrieval"):
        rules, absent = TRANSFORMERS_BLIP_RULES, EXPECTED_ABSENT[task]
    else:
        raise ValueError(f"a BlipModel exports as task 'captioning' or 'retrieval', not {task!r}")
    processor = blip_processor(model.config, vqa=task == "vqa")  # checks the tokenizer before writing
    config = transformers_config(model)
    config.architectures = [TRANSFORMERS_CLASSES[task]]
    with torch.device("meta"):
        hf = getattr(transformers, TRANSFORMERS_CLASSES[task])(config)
    own = dict(hf.named_parameters()) | dict(hf.named_buffers())  # tied copies appear once
    ours = model.state_dict()
    state, used = {}, set()
    for key, meta in hf.state_dict().items():
        if key not in own:
            continue
        target = rename(key, rules)
        if target not in ours:
            raise ValueError(f"{TRANSFORMERS_CLASSES[task]}.{key}: no weight of ours maps to it ({target!r})")
        if ours[target].shape != meta.shape:
            raise ValueError(
                f"{key!r} (ours {target!r}) has shape {tuple(ours[target].shape)}, transformers' "
                f"{TRANSFORMERS_CLASSES[task]} has {tuple(meta.shape)}"
            )
        state[key] = ours[target].detach().cpu().clone().contiguous()
        used.add(target)
    left_out = _check_all_placed(model, used, absent, TRANSFORMERS_CLASSES[task])
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(state, output / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(output)
    processor.save_pretrained(str(output))
    notes = [_ENC_NOTE] if task == "retrieval" else []
    facts = CardFacts(
        TRANSFORMERS_CLASSES[task],
        source,
        saved_tensor_count(output),
        left_out_groups(left_out, absent),
        notes,
    )
    write_model_card(output, facts)
    return output


_ENC_NOTE = (
    "BLIP's image-grounded encoder starts the text with [ENC]; the processor writes [CLS] (ITC needs it). "
    "For ITM scores equal to ours, replace the first id by [ENC] (`tokenizer.convert_tokens_to_ids('[ENC]')`)."
)


def _check_all_placed(model: nn.Module, used: set[str], absent: tuple[str, ...], name: str) -> list[str]:
    """Raise if a weight of ours was not written, is not tied to one written and is not expected absent;
    return those expected absent (left out)."""
    written = {id(t) for n, t in model.named_parameters(remove_duplicate=False) if n in used}
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    unwritten = [k for k in model.state_dict() if k not in used and id(tensors.get(k)) not in written]
    left = [k for k in unwritten if not any(re.fullmatch(p, k) for p in absent)]
    if left:
        raise ValueError(f"transformers' {name} has no place for these weights of ours: {left}")
    return [k for k in unwritten if k not in left]


def export_ours_dir(source: str | Path, output: str | Path, task: str | None = None) -> Path:
    """Export a checkpoint of ours to transformers: a ``convert --to ours`` directory, a Lightning
    ``.ckpt`` or an FSDP2 checkpoint directory of a BLIP task. A ``BlipVQA`` is recognised by its
    keys; a ``BlipModel`` needs ``task``."""
    try:
        model: BlipModel | BlipVQA = BlipVQA.from_pretrained(source)
    except KeyError:  # not a VQA model's keys
        model = BlipModel.from_pretrained(source)
    return export_transformers_blip(model, output, task, source=str(source))
