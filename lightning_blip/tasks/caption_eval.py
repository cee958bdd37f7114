"""Caption evaluation shared by the captioning tasks (BLIP fine-tuning, BLIP-2 stage 2)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from lightning_blip.metrics import CIDErScore, COCOBLEUScore, COCOROUGELScore
from lightning_blip.metrics.caption_tokenizer import Backend


def generation_options(
    options: dict[str, Any] | None,
    generate: Callable,
    passed: tuple[str, ...] = (),
    defaults: dict | None = None,
) -> dict[str, Any]:
    """``defaults`` updated with ``options`` for ``generate``, checked now: a misspelled key fails when
    the module is built, naming it, not when the first validation or predict batch generates.
    ``passed``: the arguments the task passes itself (not options)."""
    parameters = inspect.signature(generate).parameters
    allowed = [name for name in parameters if name not in ("self", *passed)]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ValueError(
            f"generate_kwargs: unknown option(s) {unknown}; {generate.__qualname__} takes {allowed}"
        )
    return {**(defaults or {}), **(options or {})}


class CaptionEval:
    """Validation/test by generation: CIDEr-D, BLEU-4 and ROUGE-L of the whole set's captions.

    Mixed into a :class:`~lightning_blip.tasks.base.BlipTask` that calls :meth:`configure_caption_metrics` in ``__init__`` and
    defines ``generate_captions(images (B, 3, H, W)) -> list[str]``. A batch that carries
    ``references`` (``B`` lists of reference captions, e.g. from
    :class:`~lightning_blip.data.caption.CaptionDataModule`) and ``index`` (``(B,)`` dataset
    indices, the image ids of the metrics) is captioned and scored; other batches are left to the
    module. The metrics gather every rank's captions and drop the repeats that a distributed
    sampler adds; ``val/cider``, ``val/bleu4``, ``val/rouge_l`` (``test/...``) are logged at the
    epoch's end, as pycocoevalcap reports them (CIDEr 1.3 = the papers' 130). Predict captions
    any batch of images, references or not.
    """

    caption_metrics: nn.ModuleDict

    def configure_caption_metrics(self, tokenizer: Backend = "python") -> None:
        """Create the metrics; ``tokenizer="java"`` uses pycocoevalcap's Stanford PTB tokenizer."""
        self.caption_metrics = nn.ModuleDict(
            {
                "cider": CIDErScore(tokenizer=tokenizer),
                "bleu4": COCOBLEUScore(tokenizer=tokenizer),
                "rouge_l": COCOROUGELScore(tokenizer=tokenizer),
            }
        )

    def generate_captions(self, images: Tensor) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def caption_eval_step(self, batch: dict) -> list[str] | None:
        """Caption the batch's images and add them to the metrics; None if it has no references."""
        if "references" not in batch:
            return None
        if len(batch["references"]) == 0:  # every image of the batch was unreadable
            return []
        captions = self.generate_captions(batch["image"])
        for metric in self.caption_metrics.values():
            metric.update(captions, batch["references"], ids=batch["index"])
        return captions

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """``{"index": (B,), "image_id": B ids, "caption": B captions}`` for the batch's images."""
        ids = batch["image_id"]
        return {
            "index": batch["index"],
            "image_id": ids.tolist() if isinstance(ids, Tensor) else list(ids),
            "caption": self.generate_captions(batch["image"]) if len(batch["image"]) else [],
        }

    def log_caption_metrics(self, stage: str) -> dict[str, float]:
        """Score the epoch's captions, log ``{stage}/cider`` etc. and reset; ``{}`` if none were made.

        Every rank scores when any rank made captions (the metrics gather across ranks: a rank
        whose images were all unreadable takes part with nothing)."""
        if not self.any_rank(self.caption_metrics["cider"].update_count > 0):
            return {}
        scores = {}
        for name, metric in self.caption_metrics.items():
            value = metric.compute()
            scores[name] = float(value[-1] if value.ndim else value)  # BLEU: (4,), BLEU-4 last
            metric.reset()
        # equal on every rank (the metrics gathered everything): the mean over ranks changes nothing
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=True, sync_dist=True)
        return scores
