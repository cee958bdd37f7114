"""Zero-shot ITC retrieval evaluation shared by the pretraining tasks (BLIP and BLIP-2 stage 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_blip.losses.gather import all_gather_row_dicts
from lightning_blip.metrics.retrieval import dot_similarity, recall_at_1


class ITCRetrievalEval:
    """Validation/test: image-to-text and text-to-image R@1 by ITC similarity over the whole set.

    Mixed into a LightningModule that defines ``retrieval_features(batch) -> (image, text)`` and
    whose ``model`` has ``positive_ids`` (a hit is a retrieved item with the query's id: image ids,
    or caption ids when the model counts identical captions as positives). Features
    from every rank are gathered (ranks may hold different numbers of rows, or none, after unreadable
    images) and the duplicates a distributed sampler adds are removed by index. Predict returns the
    features for offline retrieval.
    """

    similarity = staticmethod(dot_similarity)

    def on_validation_epoch_start(self) -> None:
        self._retrieval_outputs: list[dict[str, Tensor]] = []

    on_test_epoch_start = on_validation_epoch_start

    def retrieval_ids(self, batch: dict) -> Tensor:
        """``(B,)`` ids of the batch's pairs."""
        ids = self.model.positive_ids(batch["input_ids"], batch["image_id"])
        return batch["image_id"] if ids is None else ids

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not len(batch["index"]):  # every image of the batch was unreadable
            return
        image, text = self.retrieval_features(batch)
        self._retrieval_outputs.append(
            {
                "image": image,
                "text": text,
                "ids": self.retrieval_ids(batch),
                "index": batch["index"],
                "image_ids": batch["image_id"],  # image-to-text R@1 counts each image once
            }
        )

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        outputs, self._retrieval_outputs = self._retrieval_outputs, []
        local = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]} if outputs else None
        local = all_gather_row_dicts(local, self.device)  # every rank joins, with rows or without
        if local is None:  # no rank read an image
            return
        recall = recall_at_1(**local, similarity=self.similarity)
        stage = "test" if self.trainer.testing else "val"
        self.log_dict({f"{stage}/{k}": v for k, v in recall.items()}, prog_bar=True, rank_zero_only=True)

    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """ITC embeddings for offline retrieval: ``{"index", "image_embeds", "text_embeds"}``."""
        if not len(batch["index"]):  # every image of the batch was unreadable: no row
            return {"index": batch["index"]}
        image, text = self.retrieval_features(batch)
        return {"index": batch["index"], "image_embeds": image, "text_embeds": text}
