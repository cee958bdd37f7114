"""``QFormerStage2``: BLIP-2 generative learning, the Q-Former feeding a frozen LLM."""

from __future__ import annotations

from dataclasses import asdict

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_blip.losses.gather import global_token_mean, no_tokens
from lightning_blip.metrics.caption_tokenizer import Backend
from lightning_blip.models.blip2 import Blip2ForGeneration, Blip2LLMConfig
from lightning_blip.models.shared.vision import check_frozen_weights
from lightning_blip.tasks.base import BlipTask, default_optimizer
from lightning_blip.tasks.caption_eval import CaptionEval, generation_options

MODEL = "model."


class QFormerStage2(CaptionEval, BlipTask):
    """BLIP-2 stage 2 on image-text pairs: a thin layer over :class:`Blip2ForGeneration`.

    Trainable: ``ln_vision``, the Q-Former and the projection to the LLM (initialised from a stage-1
    checkpoint through ``config.stage1_checkpoint``). The image encoder and the LLM are frozen: no
    gradients, no optimiser state, left out of checkpoints (which name their sources). The loss is
    the LLM's next-token cross entropy on the caption tokens, normalised by the number of scored
    tokens over all ranks so that W ranks equal one rank with the same global batch.

    Validation logs ``val/loss`` on image-caption pairs and, on batches that carry ``references``
    (:class:`~lightning_blip.data.caption.CaptionDataModule`), generates captions and logs CIDEr,
    BLEU-4 and ROUGE-L (:class:`CaptionEval`), as does test.

    Args:
        config: frozen ViT + Q-Former + frozen LLM (any causal or encoder-decoder transformers LM).
        generate_kwargs: options of :meth:`Blip2ForGeneration.generate` for evaluation and ``predict``.
        metric_tokenizer: ``"python"`` or ``"java"`` (pycocoevalcap's PTB tokenizer) for the metrics.
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: Blip2LLMConfig | None = None,
        generate_kwargs: dict | None = None,
        metric_tokenizer: Backend = "python",
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = Blip2LLMConfig.from_dict(config)
        config = config or Blip2LLMConfig()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["config"] = asdict(config)  # plain dicts: checkpoints load with weights_only
        if config.freeze_vision:
            check_frozen_weights(config.vision, "model.init_args.config.vision.weights")
        self.model = Blip2ForGeneration(config)
        self.generate_kwargs = generation_options(
            generate_kwargs, Blip2ForGeneration.generate, ("pixel_values",)
        )
        self.configure_caption_metrics(metric_tokenizer)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: FSDP2-shard the ViT blocks, Q-Former layers and LLM layers."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = self.device_mesh["data_parallel"]
        model = self.model
        for block in model.image_encoder.visual_encoder.vit.blocks:
            fully_shard(block, mesh=mesh)
        for layer in model.qformer.layers:
            if layer.cross_attn is not None:  # called on its own: the image's keys/values, or attend()
                fully_shard(layer.cross_attn.attention.kv, mesh=mesh)
                register_fsdp_forward_method(layer.cross_attn.attention.kv, "attend")
            fully_shard(layer, mesh=mesh)
        # the LLM's own unit of sharding: the layer classes transformers never splits
        layer_classes = set(getattr(model.llm, "_no_split_modules", None) or ())
        for module in model.llm.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        register_fsdp_forward_method(model, "generate")

    def trainable_module(self) -> nn.Module:
        return self.model

    def no_weight_decay(self) -> set[str]:
        return self.model.no_weight_decay()

    def frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(MODEL + p for p in self.model.frozen_prefixes)

    def frozen_sources(self) -> dict:
        config = self.model.config
        return {MODEL + "llm.": config.llm, MODEL + "image_encoder.visual_encoder.": asdict(config.vision)}

    def _loss_sum(self, batch: dict) -> tuple[Tensor, Tensor]:
        """``(sum, count)`` of the LM loss over the batch's caption tokens; zeros for an empty batch
        (every image unreadable)."""
        if not batch["caption"]:
            return no_tokens(self.device)
        return self.model(batch["image"], batch["caption"], reduction="sum")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = global_token_mean(*self._loss_sum(batch))
        # each rank's loss is W x its share of the global mean, so their mean over ranks is that mean
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        self.log_skipped(batch)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if "caption" in batch:
            self.log_token_mean("val/loss", *self._loss_sum(batch))
        self.caption_eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.caption_eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self.log_caption_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_caption_metrics("test")

    def generate_captions(self, images: Tensor) -> list[str]:
        """Captions of ``(B, 3, H, W)`` images with ``generate_kwargs`` (the config's prompt)."""
        return self.model.generate(images, **self.generate_kwargs)
