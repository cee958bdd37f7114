"""``CaptionFinetune``: BLIP captioning (COCO Karpathy, NoCaps) as a LightningModule."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_blip.losses.gather import global_token_mean, no_tokens
from lightning_blip.metrics.caption_tokenizer import Backend
from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.shared.tokenizer import build_tokenizer
from lightning_blip.tasks.base import BlipTask, default_optimizer, report_init_weights
from lightning_blip.tasks.caption_eval import CaptionEval, generation_options

BLIP_CAPTION_GENERATION = {"num_beams": 3, "max_length": 20, "min_length": 5}
"""salesforce/BLIP ``configs/caption_coco.yaml``: beam search, lengths counting [DEC] and the prompt."""


class CaptionFinetune(CaptionEval, BlipTask):
    """Fine-tune the MED's image-grounded decoder as a captioner (BLIP, Sec. 5.2).

    Training: ``prompt + caption`` ([DEC] first) is scored by the decoder's cross entropy with label
    smoothing, the prompt's tokens and padding not scored, normalised by the scored tokens of all
    ranks (W ranks equal one rank with the same global batch). Validation/test: beam-search captions
    for every image, scored with CIDEr-D, BLEU-4 and ROUGE-L (:class:`CaptionEval`); predict returns
    ``{"index", "image_id", "caption"}``.

    Args:
        config: the MED model (ViT + text transformer).
        init_weights: local weights to start from: a ``MEDPretrain`` (or captioning) checkpoint or a
            :class:`BlipModel` state dict; ViT position embeddings are interpolated to this size.
        prompt: put before every caption (BLIP: "a picture of ").
        max_length: tokens of ``[DEC] + prompt + caption + [SEP]``; longer is cut (BLIP: 40).
        label_smoothing: of the LM loss (BLIP: 0.1).
        generate_kwargs: options of :meth:`BlipModel.generate` for evaluation and predict (default
            BLIP's: 3 beams, max 20, min 5 tokens, repetition penalty 1.0).
        vocab: tokenizer ``vocab.txt``; ``None`` uses the bundled bert-base-uncased vocabulary.
        metric_tokenizer: ``"python"`` or ``"java"`` (pycocoevalcap's PTB tokenizer) for the metrics.
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: BlipConfig | None = None,
        init_weights: str | None = None,
        prompt: str = "a picture of ",
        max_length: int = 40,
        label_smoothing: float = 0.1,
        generate_kwargs: dict[str, Any] | None = None,
        vocab: str | None = None,
        metric_tokenizer: Backend = "python",
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = BlipConfig.from_dict(config)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["config"] = asdict(config) if config is not None else None  # plain dicts
        self.model = BlipModel(config)
        if init_weights:
            report_init_weights(init_weights, self.model.load_pretrained(init_weights))
        self.tokenizer = build_tokenizer(vocab)
        self.prompt, self.max_length, self.label_smoothing = prompt, max_length, label_smoothing
        # BLIP: len(tokenizer(prompt).input_ids) - 1, i.e. [DEC] and the prompt's words
        self.prompt_length = len(self.tokenizer(prompt).input_ids) - 1
        self.generate_kwargs = generation_options(
            generate_kwargs,
            BlipModel.generate,
            ("pixel_values", "tokenizer", "prompt"),
            BLIP_CAPTION_GENERATION,
        )
        self.configure_caption_metrics(metric_tokenizer)

    def trainable_module(self) -> nn.Module:
        return self.model

    def no_weight_decay(self) -> set[str]:
        return self.model.no_weight_decay()

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``prompt + caption`` -> ids and mask ``(B, L)`` on this module's device ([CLS] first)."""
        text = self.tokenizer(
            [self.prompt + c for c in captions],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        return text.input_ids, text.attention_mask

    def caption_loss_sum(self, images: Tensor, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``(sum, count)`` of the LM loss over the batch's scored tokens; zeros for an empty batch
        (every image unreadable)."""
        if not captions:
            return no_tokens(self.device)
        input_ids, attention_mask = self.tokenize(captions)
        return self.model.lm_loss(
            input_ids,
            attention_mask,
            self.model(images),
            prompt_length=self.prompt_length,
            label_smoothing=self.label_smoothing,
        )

    def caption_loss(self, images: Tensor, captions: list[str]) -> Tensor:
        """Mean LM loss over the scored tokens of every rank's batch (times W, see the class); every
        rank must call it (the token count is summed over ranks)."""
        return global_token_mean(*self.caption_loss_sum(images, captions))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.caption_loss(batch["image"], batch["caption"])
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        self.log_skipped(batch)
        return loss

    @torch.no_grad()
    def generate_captions(self, images: Tensor) -> list[str]:
        """Captions of ``(B, 3, H, W)`` images, without the prompt (``generate_kwargs``)."""
        return self.model.generate(images, self.tokenizer, self.prompt, **self.generate_kwargs)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.caption_eval_step(batch) is None:  # pairs: the held-out loss
            self.log_token_mean("val/loss", *self.caption_loss_sum(batch["image"], batch["caption"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.caption_eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self.log_caption_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_caption_metrics("test")
