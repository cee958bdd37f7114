"""``CapFiltTask``: the predict step of CapFilt: caption a batch of web images, then filter its texts."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_blip.capfilt.filtering import (
    CaptionSettings,
    FilterSettings,
    sample_captions,
    score_texts,
    select_texts,
)
from lightning_blip.data.sampler import sample_seed
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.shared.tokenizer import default_tokenizer


class CapFiltTask(L.LightningModule):
    """Captioner and filter, two separately fine-tuned :class:`BlipModel`\\ s.

    ``predict_step`` returns ``{"chunk", "index", "corrupt", "results"}`` with one result per readable
    image: ``{"texts": web texts then synthetic captions, "num_web", "keep": [bool]}``. A batch's
    captions are drawn from a generator seeded with ``(seed, chunk, batch number in the chunk)``.
    """

    def __init__(
        self,
        captioner: BlipModel,
        filter_model: BlipModel,
        captioning: CaptionSettings | None = None,
        filtering: FilterSettings | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.captioner, self.filter_model = captioner, filter_model
        self.captioning = captioning or CaptionSettings()
        self.filtering = filtering or FilterSettings()
        self.seed = seed
        self.tokenizer = default_tokenizer()
        # a restart near the end may leave a rank without pending chunks; it still reaches the barriers
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = {"chunk": batch["chunk"], "index": batch["index"], "corrupt": batch["corrupt"], "results": []}
        images = batch["image"]
        if not len(images):
            return out
        generator = torch.Generator(device=images.device)
        generator.manual_seed(sample_seed(self.seed, batch["chunk"], batch["batch"]))
        synthetic = sample_captions(self.captioner, images, self.tokenizer, self.captioning, generator)
        texts = [list(web) + captions for web, captions in zip(batch["captions"], synthetic)]
        itm, itc = score_texts(self.filter_model, images, texts, self.tokenizer, self.filtering.max_words)
        for web, candidates, prob, sim in zip(batch["captions"], texts, itm, itc):
            keep = select_texts(prob, sim, self.filtering)
            out["results"].append({"texts": candidates, "num_web": len(web), "keep": keep})
        return out
