"""``MEDPretrain``: BLIP pretraining (ITC + ITM + LM) as a LightningModule."""

from __future__ import annotations

from dataclasses import asdict

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_blip.callbacks import HardNegativeMining, MomentumEncoder
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip import BlipConfig, BlipForPretraining
from lightning_blip.models.blip.pretraining import MiningFeatures
from lightning_blip.models.shared.positives import Positives
from lightning_blip.tasks.base import BlipTask, default_optimizer, report_init_weights
from lightning_blip.tasks.retrieval_eval import ITCRetrievalEval
from lightning_blip.weights.bert import is_bert, load_bert_into_blip


class MEDPretrain(ITCRetrievalEval, BlipTask):
    """BLIP pretraining of the MED model on image-text pairs.

    A thin layer over :class:`~lightning_blip.models.blip.pretraining.BlipForPretraining`: it ramps
    alpha, clamps the temperature, logs each loss and shards the model under FSDP2. The momentum
    EMA and the ITM negatives are the ``MomentumEncoder`` and ``HardNegativeMining`` callbacks; a
    bare module adds both with their defaults, a recipe may configure its own.

    Args:
        config: the MED model (ViT + text transformer).
        queue_size: ITC queue length (BLIP: 57,600).
        alpha: momentum distillation weight (BLIP: 0.4).
        alpha_ramp_epochs: alpha grows linearly from 0 over this many epochs (BLIP: 2).
        gather_keys: the current batch's momentum ITC keys come from every rank (False: this
            rank's only, as salesforce/BLIP does).
        positives: ITC positives, ``"pair"``, ``"image_id"`` or ``"caption"`` (see
            :class:`BlipForPretraining`).
        lm_loss: train the decoder too (False: ITC + ITM only, as retrieval fine-tuning).
        mining_features: ``"momentum"`` or ``"online"`` ITC features weight the ITM negatives.
        init_weights: optional local weights for the MED model: a file or state dict with
            ``BlipModel`` keys, a ``MEDPretrain`` or fine-tuning checkpoint included
            (:meth:`BlipModel.load_pretrained`); the momentum encoders start as copies.
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: BlipConfig | None = None,
        queue_size: int = 57600,
        alpha: float = 0.4,
        alpha_ramp_epochs: float = 2.0,
        gather_keys: bool = True,
        positives: Positives = "pair",
        lm_loss: bool = True,
        mining_features: MiningFeatures = "momentum",
        init_weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = BlipConfig.from_dict(config)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # plain dicts, so a checkpoint loads with torch.load(weights_only=True)
        self.hparams["config"] = asdict(config) if config is not None else None
        self.model = BlipForPretraining(config, queue_size, gather_keys, positives, lm_loss, mining_features)
        if init_weights:
            load = load_bert_into_blip if is_bert(init_weights) else type(self.model.blip).load_pretrained
            report_init_weights(init_weights, load(self.model.blip, init_weights))
            self.model.copy_to_momentum()
        self.alpha = alpha
        self.alpha_ramp_epochs = alpha_ramp_epochs
        self.negative_sampler = NegativeSampler()

    def default_callbacks(self) -> list:
        """Callbacks added when the trainer has none of their type (a recipe's take precedence)."""
        return [MomentumEncoder(), HardNegativeMining()]

    def configure_callbacks(self) -> list:
        present = self.trainer.callbacks if self._trainer is not None else []
        defaults = self.default_callbacks()
        return [d for d in defaults if not any(isinstance(c, type(d)) for c in present)]

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: FSDP2-shard every transformer block, then the rest."""
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = self.device_mesh["data_parallel"]
        model = self.model
        for encoder in (model.blip.visual_encoder, model.visual_encoder_m):
            for block in encoder.vit.blocks:
                fully_shard(block, mesh=mesh)
        for text in (model.blip.text, model.text_m):
            for layer in text.layers:
                if layer.cross_attn is not None:  # called on its own to compute the image's keys/values
                    fully_shard(layer.cross_attn.attention.kv, mesh=mesh)
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        register_fsdp_forward_method(model, "retrieval_features")  # validation calls it directly

    def trainable_module(self) -> nn.Module:
        return self.model

    def no_weight_decay(self) -> set[str]:
        return {f"blip.{name}" for name in self.model.blip.no_weight_decay()}

    def momentum_update(self, momentum: float) -> None:
        """Called by the ``MomentumEncoder`` callback after each optimiser step."""
        self.model.momentum_update(momentum)

    def current_alpha(self) -> float:
        """``alpha * min(1, step / (alpha_ramp_epochs * steps_per_epoch))`` (BLIP's ramp)."""
        if self.alpha_ramp_epochs <= 0:
            return self.alpha
        ramp = self.alpha_ramp_epochs * self.steps_per_epoch()
        return self.alpha * min(1.0, self.global_step / ramp)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.model.clamp_temperature_()

    def training_step(self, batch: dict, batch_idx: int):
        alpha = self.current_alpha()
        out = self.model(
            batch["image"],
            batch["input_ids"],
            batch["attention_mask"],
            image_ids=batch.get("image_id"),
            alpha=alpha,
            negative_sampler=self.negative_sampler,
        )
        losses = {"loss_itc": out.loss_itc, "loss_itm": out.loss_itm}
        if self.model.lm_loss:
            losses["loss_lm"] = out.loss_lm
        loss = self.log_losses(losses, batch["input_ids"].shape[0], alpha=alpha, temp=out.temp)
        self.log_skipped(batch)
        return loss

    # evaluation (ITCRetrievalEval) ------------------------------------------------------------------
    def retrieval_features(self, batch: dict) -> tuple[Tensor, Tensor]:
        return self.model.retrieval_features(batch["image"], batch["input_ids"], batch["attention_mask"])
