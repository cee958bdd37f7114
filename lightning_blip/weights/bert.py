"""bert-base-uncased as the start of BLIP's text transformer and of BLIP-2's Q-Former.

- BLIP (salesforce/BLIP ``blip_pretrain.py``): the text encoder is ``BertModel.from_pretrained`` and the
  decoder ``BertLMHeadModel.from_pretrained`` of the same BERT, so both self-attentions, the shared FFN
  and the LM head come from BERT; cross-attention starts at its initialisation. [DEC] and [ENC] are new
  rows of the word embeddings (and of the LM head's bias), at their initialisation.
- BLIP-2 (LAVIS ``Blip2Base.init_Qformer`` + ``Blip2Qformer.__init__``): the Q-Former is
  ``BertLMHeadModel.from_pretrained`` with cross-attention every ``cross_attention_freq`` layers (new),
  [DEC] a new row, and each query FFN (``*_query``) a copy of the text FFN of its layer.

The BERT keys are renamed into the salesforce / LAVIS layouts, whose key tables then load them, so the
two directions of each table cannot drift.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.download import resolve_pretrained
from lightning_blip.weights.keymap import LoadReport, load_with_rules, rename
from lightning_blip.weights.lavis_blip2 import LAVIS_BLIP2_RULES
from lightning_blip.weights.salesforce_blip import SALESFORCE_BLIP_RULES
from lightning_blip.weights.transformers_blip import read_transformers_state_dict

BERT_IGNORED = (
    r"bert\.pooler\..*",
    r"bert\.embeddings\.(token_type_embeddings\..*|position_ids)",
    r"cls\.seq_relationship\..*",
)
"""BERT keys neither BLIP nor BLIP-2 has a place for (BLIP's embeddings have no token types)."""

BLIP_FROM_BERT_ABSENT = (
    r"visual_encoder\..*",
    r"text\.layers\.\d+\.cross_attn\..*",
    r"(vision_proj|text_proj|itm_head)\..*",
    "temp",
)
QFORMER_FROM_BERT_ABSENT = (
    r"image_encoder\..*",
    "qformer.query_tokens",
    r"qformer\.layers\.\d+\.cross_attn\..*",
    r"(vision_proj|text_proj|itm_head)\..*",
    "temp",
)
_FFN = re.compile(r"(bert\.encoder\.layer\.\d+\.)(intermediate|output)\.(.+)")


def is_bert(source: str | Path) -> bool:
    """Whether ``source`` (a released name or a path) is a BERT checkpoint (a hub ``model_type: bert``)."""
    path, entry = resolve_pretrained(source)
    if entry is not None:
        return entry.format == "hf-bert"
    config = Path(path) / "config.json" if path is not None and Path(path).is_dir() else None
    return (
        config is not None and config.is_file() and json.loads(config.read_text()).get("model_type") == "bert"
    )


def read_bert(source: str | Path) -> dict[str, Tensor]:
    """A BERT checkpoint's state dict: a released name, a ``save_pretrained`` folder or a weights file."""
    path, _ = resolve_pretrained(source)
    return read_transformers_state_dict(path) if Path(path).is_dir() else load_state_dict_file(path)


def bert_as_salesforce_blip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BERT keys as salesforce/BLIP's: the body as ``text_encoder.*`` and ``text_decoder.bert.*``, the MLM
    head as ``text_decoder.cls.*``."""
    out = {}
    for key, value in state.items():
        if key.startswith("bert."):
            out["text_encoder." + key[5:]] = out["text_decoder." + key] = value
        elif key.startswith("cls."):
            out["text_decoder." + key] = value
        else:
            out[key] = value
    return out


def bert_as_lavis_qformer(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BERT keys as LAVIS's ``Qformer.*``, each layer's FFN copied to the queries' FFN (``*_query``)."""
    out = {}
    for key, value in state.items():
        out["Qformer." + key] = value
        ffn = _FFN.fullmatch(key)
        if ffn:
            out[f"Qformer.{ffn[1]}{ffn[2]}_query.{ffn[3]}"] = value
    return out


def with_new_rows(state: dict[str, Tensor], model: nn.Module, rules) -> dict[str, Tensor]:
    """Vocabulary tensors (rows of our larger vocabulary) completed with the model's own rows: the
    tokens BERT lacks ([DEC], [ENC]) keep their initialisation, as the references' resized embeddings."""
    own = model.state_dict()
    out = {}
    for key, value in state.items():
        target = own.get(rename(key, rules) or "")
        fewer_rows = target is not None and value.ndim == target.ndim and value.shape[0] < target.shape[0]
        if fewer_rows and value.shape[1:] == target.shape[1:]:
            value = torch.cat([value, target[value.shape[0] :].to(value.dtype)])
        out[key] = value
    return out


def load_bert_into_blip(model: nn.Module, source: str | Path) -> LoadReport:
    """Initialise a ``BlipModel``'s text transformer and LM head from BERT (see the module docstring)."""
    state = with_new_rows(bert_as_salesforce_blip(read_bert(source)), model, SALESFORCE_BLIP_RULES)
    ignored = [r"text_encoder\." + p.removeprefix(r"bert\.") for p in BERT_IGNORED[:2]]
    ignored += [r"text_decoder\." + p for p in BERT_IGNORED]
    return load_with_rules(
        model, state, SALESFORCE_BLIP_RULES, BLIP_FROM_BERT_ABSENT, ignored, True, str(source)
    )


def load_bert_into_qformer(model: nn.Module, source: str | Path) -> LoadReport:
    """Initialise a ``Blip2Model``'s Q-Former and ITG head from BERT (see the module docstring)."""
    state = with_new_rows(bert_as_lavis_qformer(read_bert(source)), model, LAVIS_BLIP2_RULES)
    ignored = [r"Qformer\." + p for p in BERT_IGNORED]
    return load_with_rules(
        model, state, LAVIS_BLIP2_RULES, QFORMER_FROM_BERT_ABSENT, ignored, True, str(source)
    )
