"""Configurations of BLIP-2's :class:`~lightning_blip.models.blip2.model.Blip2Model` (stage 1) and
:class:`~lightning_blip.models.blip2.llm.Blip2ForGeneration` (stage 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.activations import ACT2FN

from lightning_blip.models.blip2.qformer import QFormerConfig
from lightning_blip.models.shared.vision import VisionConfig

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def eva_vit_g() -> VisionConfig:
    """EVA-CLIP ViT-g/14 at 224 px with its last block removed and no final norm (BLIP-2's default)."""
    return VisionConfig("eva_giant_patch14_224", image_size=224, num_removed_blocks=1, final_norm=False)


@dataclass
class Blip2Config:
    """Configuration of :class:`Blip2Model`.

    Attributes:
        vision: the timm ViT (``qformer.encoder_width`` is set to its width).
        qformer: the Q-Former.
        embed_dim: width of the ITC space.
        temperature: initial ITC temperature (0.07; clamped to [0.001, 0.5] as in BLIP).
        freeze_vision: keep the image encoder frozen (no gradients, eval mode); stage 1 and 2.
        frozen_vision_dtype: dtype of the frozen image encoder on a GPU (``float16`` as LAVIS,
            ``bfloat16`` or ``float32``); it stays in fp32 on CPU.
        bos_token_id: [DEC], the first token of the ITG decoder.
        pad_token_id: [PAD].
        ln_vision_eps: epsilon of ``ln_vision`` (LAVIS: 1e-5; transformers' ``post_layernorm`` uses its
            vision config's, 1e-6 by default).
    """

    vision: VisionConfig = field(default_factory=eva_vit_g)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    embed_dim: int = 256
    temperature: float = 0.07
    freeze_vision: bool = True
    frozen_vision_dtype: str = "float16"
    bos_token_id: int = 30522
    pad_token_id: int = 0
    ln_vision_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.frozen_vision_dtype not in DTYPES:
            raise ValueError(
                f"frozen_vision_dtype must be one of {sorted(DTYPES)}, got {self.frozen_vision_dtype!r}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> Blip2Config:
        """Rebuild from :func:`dataclasses.asdict` output (checkpoints keep configs as plain dicts)."""
        values = dict(values)
        vision = VisionConfig(**values.pop("vision", {}))
        qformer = QFormerConfig(**values.pop("qformer", {}))
        return cls(vision=vision, qformer=qformer, **values)


@dataclass
class Blip2LLMConfig:
    """Configuration of :class:`Blip2ForGeneration`.

    Attributes:
        vision: the timm ViT (``qformer.encoder_width`` is set to its width).
        qformer: the Q-Former; its text parts are never built in stage 2 (``text`` is forced False).
        llm: a transformers model name (already in the local cache) or a local directory; loaded with
            ``local_files_only=True`` together with its tokenizer.
        llm_kind: ``causal`` (decoder-only), ``seq2seq`` (encoder-decoder) or ``auto`` (the LLM
            config's ``is_encoder_decoder``).
        llm_dtype: dtype of the frozen LLM on a GPU (``float16`` for OPT as LAVIS, ``bfloat16`` for
            FlanT5, which overflows in fp16); it stays in fp32 on CPU.
        freeze_vision: keep the image encoder frozen.
        frozen_vision_dtype: dtype of the frozen image encoder on a GPU.
        prompt: text put before every caption (e.g. ``"a photo of"``) and used by :meth:`generate`
            when none is given; joined to the text with a space unless it ends in whitespace.
        max_text_length: tokens of the LLM text part (prompt included); longer texts are truncated.
        stage1_checkpoint: a stage-1 weights file (:class:`~lightning_blip.models.blip2.model.Blip2Model`
            keys, possibly prefixed) loaded into ``ln_vision`` and the Q-Former at construction.
        ln_vision_eps: epsilon of ``ln_vision`` (LAVIS: 1e-5; transformers: its vision config's).
        score_bos: LAVIS's rule (``blip2_opt.py`` masks BOS + prompt only ``if self.prompt``): with an
            empty prompt, a decoder-only LLM's BOS is a target of the caption loss, so the last query
            position is trained to predict it. False: BOS is never scored. With a prompt, BOS and the
            prompt are never scored.
        stop_at_eos: decoder-only LLMs whose newline is one token stop generating at that newline
            alone, as LAVIS (its ``eos_token_id`` is the newline's id); True stops at the LLM's EOS
            too. Other decoder-only LLMs and encoder-decoders stop at EOS.
        llm_dense_act_fn: the ``dense_act_fn`` (a transformers activation name) set on a T5 LLM's
            config before it is built; None keeps the config as shipped (FlanT5: ``gelu_new``, the
            tanh approximation). LAVIS trains FlanT5 with ``"gelu"`` (exact); a LAVIS file whose LLM
            is a T5 is loaded with ``"gelu"`` unless this is set.
    """

    vision: VisionConfig = field(default_factory=eva_vit_g)
    qformer: QFormerConfig = field(default_factory=lambda: QFormerConfig(text=False))
    llm: str = "facebook/opt-2.7b"
    llm_kind: Literal["auto", "causal", "seq2seq"] = "auto"
    llm_dtype: str = "float16"
    freeze_vision: bool = True
    frozen_vision_dtype: str = "float16"
    prompt: str = ""
    max_text_length: int = 32
    stage1_checkpoint: str | None = None
    ln_vision_eps: float = 1e-5
    score_bos: bool = True
    stop_at_eos: bool = False
    llm_dense_act_fn: str | None = None

    def __post_init__(self) -> None:
        for name in ("llm_dtype", "frozen_vision_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if self.llm_dense_act_fn is not None and self.llm_dense_act_fn not in ACT2FN:
            raise ValueError(
                f"llm_dense_act_fn must be None or a transformers activation name, got {self.llm_dense_act_fn!r}"
            )
        if self.llm_kind not in ("auto", "causal", "seq2seq"):
            raise ValueError(f"llm_kind must be auto, causal or seq2seq, got {self.llm_kind!r}")

    @classmethod
    def from_dict(cls, values: dict) -> Blip2LLMConfig:
        """Rebuild from :func:`dataclasses.asdict` output (checkpoints keep configs as plain dicts)."""
        values = dict(values)
        vision = VisionConfig(**values.pop("vision", {}))
        qformer = QFormerConfig(**values.pop("qformer", {"text": False}))
        return cls(vision=vision, qformer=qformer, **values)
