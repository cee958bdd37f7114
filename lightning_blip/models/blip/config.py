"""Configuration of BLIP's :class:`~lightning_blip.models.blip.model.BlipModel` (and ``BlipVQA``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_blip.models.blip.med import MEDConfig
from lightning_blip.models.shared.vision import VisionConfig


@dataclass
class BlipConfig:
    """Configuration of :class:`BlipModel`.

    Attributes:
        vision: the timm ViT.
        text: the MED text transformer (``encoder_width`` is set to the ViT's width).
        embed_dim: width of the ITC space.
        temperature: initial ITC temperature.
        bos_token_id: [DEC], the decoder's first token.
        enc_token_id: [ENC], the image-grounded encoder's first token.
        sep_token_id: [SEP], end of text.
        pad_token_id: [PAD].
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: MEDConfig = field(default_factory=MEDConfig)
    embed_dim: int = 256
    temperature: float = 0.07
    bos_token_id: int = 30522
    enc_token_id: int = 30523
    sep_token_id: int = 102
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> BlipConfig:
        """Rebuild from :func:`dataclasses.asdict` output (checkpoints keep configs as plain dicts)."""
        values = dict(values)
        vision = VisionConfig(**values.pop("vision", {}))
        text = MEDConfig(**values.pop("text", {}))
        return cls(vision=vision, text=text, **values)
