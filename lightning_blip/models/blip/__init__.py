"""The BLIP family: the MED text transformer, ``BlipModel`` (ITC, ITM, captioning), its pretraining
objectives and ``BlipVQA``; ``pretrained`` builds them from other formats' configs."""

from lightning_blip.models.blip.config import BlipConfig
from lightning_blip.models.blip.med import MEDConfig, MEDTextModel
from lightning_blip.models.blip.model import BlipModel
from lightning_blip.models.blip.pretraining import BlipForPretraining
from lightning_blip.models.blip.vqa import BlipVQA, QuestionStates

__all__ = [
    "BlipConfig",
    "BlipForPretraining",
    "BlipModel",
    "BlipVQA",
    "MEDConfig",
    "MEDTextModel",
    "QuestionStates",
]
