"""Retrieval evaluation with ITM re-ranking (BLIP's and BLIP-2's COCO / Flickr30k protocol) for LightningModules."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_blip.losses.gather import pad_to
from lightning_blip.metrics.retrieval import retrieval_recall
from lightning_blip.models.shared.retrieval import RetrievalModel, rerank


class RerankRetrievalEval:
    """Validation/test: ITC similarity of every image with every text, ITM re-ranking of the top
    ``k_test``, then R@1/5/10 both ways (:func:`~lightning_blip.models.shared.retrieval.rerank`,
    :func:`~lightning_blip.metrics.retrieval.retrieval_recall`).

    Mixed into a LightningModule that sets ``k_test`` and ``rerank_batch_size`` and defines
    ``retrieval_model()`` (a :class:`~lightning_blip.models.shared.retrieval.RetrievalModel`). Batches
    come from :class:`~lightning_blip.data.retrieval.RetrievalCollator` (images with all their
    captions). Each step runs the ViT once per image and keeps its tokens (on the CPU, as
    salesforce/BLIP does) for the re-ranking at the end of the epoch, which gathers the features
    of every rank and splits the ITM work between ranks by image. Logs ``{stage}/txt_r1`` ...
    ``{stage}/r_mean`` (fractions, equal on every rank) and ``{stage}/itc_r_mean`` (ITC alone).
    The model's methods are called directly, outside its ``forward``: this works with DDP (the
    recipes' strategy), not with a model sharded by FSDP2.
    """

    k_test: int
    rerank_batch_size: int

    def retrieval_model(self) -> RetrievalModel:  # pragma: no cover - defined by the task
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self._rerank_outputs: list[dict[str, Tensor]] = []

    on_test_epoch_start = on_validation_epoch_start

    def _encode(self, batch: dict) -> dict[str, Tensor]:
        model = self.retrieval_model()
        image_embeds = model.forward_image(batch["image"])
        return {
            "image_embeds": image_embeds.cpu(),
            "image_feats": model.encode_image_embeds(image_embeds),
            "image_ids": batch["index"],
            "text_feats": model.encode_text(batch["input_ids"], batch["attention_mask"]),
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "text_ids": batch["text_index"],
            "text_image_ids": batch["text_image_index"],
        }

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if len(batch["index"]):  # every image of the batch may have been unreadable
            self._rerank_outputs.append(self._encode(batch))

    test_step = validation_step

    def _empty_outputs(self) -> dict[str, Tensor]:
        """Zero-row outputs of the right shapes, for a rank that got no readable image."""
        model = self.retrieval_model()
        size = model.config.vision.image_size
        ids = torch.tensor([[101, 102]], device=self.device)
        batch = {
            "image": torch.zeros(1, 3, size, size, device=self.device),
            "index": torch.zeros(1, dtype=torch.long, device=self.device),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "text_index": torch.zeros(1, dtype=torch.long, device=self.device),
            "text_image_index": torch.zeros(1, dtype=torch.long, device=self.device),
        }
        return {k: v[:0] for k, v in self._encode(batch).items()}

    def on_validation_epoch_end(self) -> None:
        outputs, self._rerank_outputs = self._rerank_outputs, []
        if not outputs:
            if self.trainer.world_size == 1:
                return
            outputs = [self._empty_outputs()]  # the other ranks still gather and reduce
        length = max(o["input_ids"].shape[1] for o in outputs)
        for o in outputs:
            o["input_ids"], o["attention_mask"] = (
                pad_to(o["input_ids"], length, 0),
                pad_to(o["attention_mask"], length, 0),
            )
        local = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        with self.trainer.precision_plugin.forward_context():  # the precision of the steps
            scores = rerank(self.retrieval_model(), **local, k=self.k_test, batch_size=self.rerank_batch_size)
        recall = retrieval_recall(scores.i2t, scores.txt2img, sim_t2i=scores.t2i)
        recall["itc_r_mean"] = retrieval_recall(scores.sim, scores.txt2img)["r_mean"]
        stage = "test" if self.trainer.testing else "val"
        r_mean = recall.pop("r_mean")
        # equal on every rank already; sync_dist keeps Lightning's epoch-level checks quiet
        self.log_dict({f"{stage}/{k}": v for k, v in recall.items()}, sync_dist=True)
        self.log(f"{stage}/r_mean", r_mean, prog_bar=True, sync_dist=True)

    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, dict]:
        """ITC features for offline retrieval, as two streams (a batch has more texts than images):
        ``{"images": {"index", "image_id", "image_embeds"}, "texts": {"text_index", "caption",
        "text_embeds"}}``; a stream without rows (images only, texts only) has no embeddings."""
        model = self.retrieval_model()
        images = {"index": batch["index"], "image_id": batch["image_id"]}
        if len(batch["index"]):
            images["image_embeds"] = model.encode_image(batch["image"])
        texts = {"text_index": batch["text_index"], "caption": batch["caption"]}
        if len(batch["text_index"]):
            texts["text_embeds"] = model.encode_text(batch["input_ids"], batch["attention_mask"])
        return {"images": images, "texts": texts}
