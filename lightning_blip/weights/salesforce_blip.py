"""salesforce/BLIP and LAVIS BLIP ``.pth`` state dicts -> our ``BlipModel`` / ``BlipVQA``.

Key names (salesforce/BLIP ``models/blip*.py``, ``med.py``, ``vit.py``; LAVIS
``lavis/models/blip_models/``, ``lavis/models/med.py``, ``lavis/models/vit.py``):

- ``visual_encoder.*``: a timm-layout ViT (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
  ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), ours under ``.vit``.
  ``pos_embed`` of another grid (a 224-px pretrained checkpoint into a 384-px model) is resampled.
- ``text_encoder.*`` (BERT without pooler) and ``text_decoder.bert.*`` + ``text_decoder.cls.predictions.*``
  (BERT LM head): the names transformers' BLIP port kept, so the text rules are
  :data:`~lightning_blip.weights.transformers_blip.BERT_TEXT_RULES`.
- ``vision_proj``, ``text_proj``, ``itm_head``; ``temp`` is a 0-d tensor there, ``(1,)`` here.
- Ignored by design: the momentum copies (``visual_encoder_m``, ``text_encoder_m``,
  ``vision_proj_m``, ``text_proj_m``), the queues (``image_queue``, ``text_queue``, ``idx_queue``)
  and their pointer (``ptr_queue`` in salesforce/BLIP's retrieval model, ``queue_ptr`` in its
  pretraining model and in LAVIS), and ``position_ids`` buffers.

Which checkpoint is which (:func:`checkpoint_kind`):

- pretraining (``BLIP_Pretrain``, LAVIS ``BlipPretrain``; ``model_base.pth``, ``model_large.pth``):
  encoder, decoder and heads, one MED. The decoder's embeddings, cross-attention and FFN are the
  encoder's (BLIP ties them), so the file holds them twice: both copies map to our single weight
  and must be equal (reported in ``tied``); only the self-attention differs.
- retrieval / ITM (``BLIP_Retrieval``, ``BLIP_ITM``, LAVIS ``BlipRetrieval``): no decoder.
- captioning (``BLIP_Decoder``, LAVIS ``BlipCaption``): no encoder, no ITC/ITM heads, no ``temp``.
- VQA (``BLIP_VQA``, LAVIS ``BlipVQA``): ``text_encoder`` and ``text_decoder`` are separate
  networks -> :class:`~lightning_blip.models.blip.vqa.BlipVQA` (no ITC/ITM heads).

LAVIS uses salesforce/BLIP's names (its ``XBertEncoder``/``XBertLMHeadDecoder`` subclass BLIP's BERT
classes and keep their attributes). Differences: LAVIS's retrieval model names the queue pointer
``queue_ptr`` (salesforce/BLIP: ``ptr_queue``), and LAVIS's training checkpoints drop every
parameter with ``requires_grad=False``, i.e. the momentum copies (queues, being buffers, stay).
NLVR2 models (two cross-attentions per layer) are not a MED: their keys are reported unexpected.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from lightning_blip.weights.keymap import LoadReport, Rule, load_with_rules
from lightning_blip.weights.transformers_blip import BERT_TEXT_RULES, EXPECTED_ABSENT, read_source
from lightning_blip.weights.transformers_blip_vqa import is_vqa_checkpoint, vqa_rules

SALESFORCE_BLIP_RULES: tuple[Rule, ...] = (
    (r"visual_encoder\.(.+)", r"visual_encoder.vit.\1"),  # BLIP's ViT has timm's names
    *BERT_TEXT_RULES,
    ("temp", "temp"),
)
"""salesforce/BLIP and LAVIS BLIP keys -> our ``BlipModel`` keys, first full match wins."""

SALESFORCE_BLIP_VQA_RULES: tuple[Rule, ...] = vqa_rules(SALESFORCE_BLIP_RULES)
"""salesforce/BLIP and LAVIS ``BLIP_VQA`` keys -> our ``BlipVQA`` keys."""

IGNORED: tuple[str, ...] = (
    r"(?:visual_encoder|text_encoder|vision_proj|text_proj)_m\..*",
    r"(?:image|text|idx)_queue|ptr_queue|queue_ptr",
    r"(?:text_encoder|text_decoder\.bert)\.embeddings\.position_ids",
)
"""Source keys that hold no weights of ours: momentum encoders, feature queues, index buffers."""


def checkpoint_kind(state: dict[str, Tensor]) -> str:
    """``"pretrain"``, ``"retrieval"``, ``"captioning"``, ``"vqa"`` or ``"vision"`` from the keys."""
    if is_vqa_checkpoint(state):
        return "pretrain" if "itm_head.weight" in state else "vqa"
    if any(k.startswith("text_encoder.") for k in state):
        return "retrieval"
    return "captioning" if any(k.startswith("text_decoder.") for k in state) else "vision"


def load_salesforce_blip(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a salesforce/BLIP or LAVIS BLIP checkpoint into our ``BlipModel`` or ``BlipVQA`` (in place).

    Args:
        model: a :class:`~lightning_blip.models.blip.model.BlipModel` for a pretraining, retrieval or
            captioning checkpoint, a :class:`BlipVQA` for a VQA one.
        source: a ``.pth`` file (``{"model": state_dict}`` is unwrapped; loaded with
            ``weights_only=True``), a safetensors file or a state dict.
        strict: raise ``KeyError`` on missing keys (beyond those the kind lacks) or unexpected keys.

    Raises:
        ValueError: the checkpoint's kind does not fit the model, a shape differs (key and both shapes
            named) or the tied encoder/decoder copies of a pretraining checkpoint differ.
    """
    state, name = read_source(source)
    if "temp" in state and state["temp"].dim() == 0:
        state = {**state, "temp": state["temp"].reshape(1)}
    kind = checkpoint_kind(state)
    if hasattr(model, "answer_decoder") != (kind == "vqa"):  # a BlipVQA (no model class imported here)
        wanted = "BlipVQA" if kind == "vqa" else "BlipModel"
        raise ValueError(
            f"{name}: a BLIP {kind} checkpoint loads into a {wanted}, not a {type(model).__name__}"
        )
    if kind == "vqa":
        rules, absent = SALESFORCE_BLIP_VQA_RULES, ()
    else:
        rules, absent = SALESFORCE_BLIP_RULES, () if kind == "pretrain" else EXPECTED_ABSENT[kind]
    return load_with_rules(model, state, rules, absent, IGNORED, strict=strict, source=name)
