"""The BLIP family: the MED text transformer, ``BlipModel`` (ITC, ITM, captioning), its pretraining
objectives and ``BlipVQA``; ``pretrained`` builds them from other formats' configs."""

from lightning_blip.models.blip.config import BlipConfig as BlipConfig
from lightning_blip.models.blip.med import MEDConfig as MEDConfig
from lightning_blip.models.blip.med import MEDTextModel as MEDTextModel
from lightning_blip.models.blip.model import BlipModel as BlipModel
from lightning_blip.models.blip.pretraining import BlipForPretraining as BlipForPretraining
from lightning_blip.models.blip.vqa import BlipVQA as BlipVQA
from lightning_blip.models.blip.vqa import QuestionStates as QuestionStates
