"""The BLIP-2 family: the Q-Former, ``Blip2Model`` (stage 1), ``Blip2ForGeneration`` (stage 2, a
frozen LLM), the stage-1 objectives and OPT decoding; ``pretrained`` builds them from other formats'
configs."""

from lightning_blip.models.blip2.config import Blip2Config as Blip2Config
from lightning_blip.models.blip2.config import Blip2LLMConfig as Blip2LLMConfig
from lightning_blip.models.blip2.llm import Blip2ForGeneration as Blip2ForGeneration
from lightning_blip.models.blip2.model import Blip2Model as Blip2Model
from lightning_blip.models.blip2.pretraining import Blip2ForPretraining as Blip2ForPretraining
from lightning_blip.models.blip2.qformer import QFormer as QFormer
from lightning_blip.models.blip2.qformer import QFormerConfig as QFormerConfig
