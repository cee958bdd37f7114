"""transformers' ``BlipForQuestionAnswering`` -> our :class:`~lightning_blip.models.blip.vqa.BlipVQA`.

BLIP's VQA model holds two text transformers that no longer share weights: the question encoder
(``text_encoder.*``, BERT names, cross-attention to the ViT) and the answer decoder
(``text_decoder.bert.*`` + ``text_decoder.cls.*``, cross-attention to the question states). Each uses
the same BERT names as one MED, so the table is derived from a format's MED table
(:func:`vqa_rules`): every text rule is restricted to one source network and sent to that network's
module of ours. One table per format, kept once.

Differences to know when comparing with transformers (``tests/weights/test_blip_vqa_transformers.py``
checks the rest to 1e-5):

- [ENC]: BLIP's question encoder (and :meth:`BlipVQA.encode_questions`) replaces the first question
  token by [ENC]; transformers' ``forward`` and ``generate`` use the ids as given ([CLS] from its
  processor). Our answers equal transformers' when transformers is given [ENC]-first ids.
- Question mask: BLIP's ``generate`` lets the answer decoder attend to every question state,
  padding included, and its training loss and answer ranking mask the padding.
  :meth:`BlipVQA.generate_answers` masks it by default; ``QuestionStates(states, None)`` reproduces
  BLIP's ``generate``. transformers (5.23) never masks it: its ``generate`` passes an all-ones mask,
  and its text model drops any cross-attention mask (``BlipTextAttention`` hands it on as the
  self-attention mask, which ``BlipTextSelfAttention`` replaces by the absent encoder mask), so its
  ``forward`` loss also attends to the padding of a padded question batch. Unpadded (one question,
  or questions of one length), the two agree.
- Defaults: ``BlipVQA.answer``/``generate_answers`` decode with BLIP's 3 beams, at most 10 and at
  least 1 tokens counting [DEC]; transformers' ``generate`` uses its generation config (greedy, max
  length 20) unless told. With a length penalty other than 0, beam search can rank finished
  hypotheses differently (see :mod:`~lightning_blip.weights.transformers_blip`). transformers
  has no answer ranking (:meth:`BlipVQA.rank_answers`).
- transformers' ``forward`` returns no logits, only the mean label-smoothed loss; compare logits
  through its ``text_decoder``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from lightning_blip.weights.keymap import LoadReport, Rule, load_with_rules
from lightning_blip.weights.transformers_blip import IGNORED, TRANSFORMERS_BLIP_RULES, read_source

NETWORKS: tuple[tuple[str, str, str], ...] = (
    ("text_encoder.", "text.", "question_encoder."),
    ("text_decoder.", "text.", "answer_decoder."),
    ("text_decoder.", "lm_head.", "answer_head."),
)
"""``(source network prefix, our MED prefix, our BlipVQA prefix)``: where each network's weights go."""


def vqa_rules(med_rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """A format's MED table (source keys -> :class:`BlipModel` keys) as its :class:`BlipVQA` table.

    ViT rules are kept; each text rule becomes one rule per source network, restricted to that
    network's keys by a look-ahead and sent to its module of ours; rules of the ITC/ITM heads (which
    BLIP's VQA model lacks) are dropped, so such source keys are unexpected.
    """
    rules: list[Rule] = [(p, t) for p, t in med_rules if t.startswith("visual_encoder.")]
    for source, med, ours in NETWORKS:
        look_ahead = f"(?={re.escape(source)})"
        rules += [(f"{look_ahead}(?:{p})", ours + t[len(med) :]) for p, t in med_rules if t.startswith(med)]
    return tuple(rules)


TRANSFORMERS_BLIP_VQA_RULES: tuple[Rule, ...] = vqa_rules(TRANSFORMERS_BLIP_RULES)
"""transformers' ``BlipForQuestionAnswering`` keys -> our ``BlipVQA`` keys."""


def is_vqa_checkpoint(state: dict[str, Tensor]) -> bool:
    """True when a BLIP state dict holds both a ``text_encoder`` and a ``text_decoder`` network."""
    return any(k.startswith("text_encoder.") for k in state) and any(
        k.startswith("text_decoder.") for k in state
    )


def load_transformers_blip_vqa(
    model: nn.Module, source: str | Path | dict[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a transformers ``BlipForQuestionAnswering`` checkpoint into our ``BlipVQA`` (in place).

    Args:
        model: a :class:`~lightning_blip.models.blip.vqa.BlipVQA` whose config matches the checkpoint's
            (transformers' answer decoder reads the question states with the ViT's width, ours with
            the text width: they must be equal, as in BLIP, or a shape error names the key).
        source: a ``save_pretrained`` directory, a weights file, or a state dict.
        strict: raise ``KeyError`` on missing or unexpected keys.

    Returns:
        The :class:`~lightning_blip.weights.keymap.LoadReport` (the LM head's tied copies in ``tied``).
    """
    state, name = read_source(source)
    if not is_vqa_checkpoint(state):
        raise ValueError(
            f"{name}: not a BlipForQuestionAnswering checkpoint (needs text_encoder and text_decoder)"
        )
    return load_with_rules(model, state, TRANSFORMERS_BLIP_VQA_RULES, (), IGNORED, strict=strict, source=name)
