"""``QFormerStage1``: BLIP-2 representation learning (ITC + ITM + ITG) with a frozen image encoder."""

from __future__ import annotations

from dataclasses import asdict

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_blip.callbacks import HardNegativeMining
from lightning_blip.losses.itc import max_query_similarity
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip2 import Blip2Config, Blip2ForPretraining
from lightning_blip.models.shared.positives import Positives
from lightning_blip.models.shared.vision import check_frozen_weights
from lightning_blip.tasks.base import BlipTask, default_optimizer, report_init_weights
from lightning_blip.tasks.retrieval_eval import ITCRetrievalEval
from lightning_blip.weights.bert import is_bert, load_bert_into_qformer
from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.keymap import LoadReport


class QFormerStage1(ITCRetrievalEval, BlipTask):
    """BLIP-2 stage 1 on image-text pairs: a thin layer over :class:`Blip2ForPretraining`.

    The image encoder is frozen (no gradients, no optimiser state, eval mode, half precision on a
    GPU) and left out of checkpoints, which record where it comes from (``config.vision``). ITM
    negatives come from the ``HardNegativeMining`` callback (default: sampled from every rank's
    batch, as LAVIS). Validation/test report zero-shot ITC retrieval R@1 (max over queries).

    Args:
        config: frozen ViT + Q-Former.
        gather_with_grad: ITC features of the other ranks carry gradient (False: LAVIS).
        positives: ITC positives, ``"pair"``, ``"image_id"`` or ``"caption"``.
        itg_cache: ITG on the cached query keys/values (the reference's efficient form).
        init_weights: optional local weights for the Q-Former side (our checkpoint or a state dict).
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    similarity = staticmethod(max_query_similarity)

    def __init__(
        self,
        config: Blip2Config | None = None,
        gather_with_grad: bool = True,
        positives: Positives = "pair",
        itg_cache: bool = True,
        init_weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = Blip2Config.from_dict(config)
        config = config or Blip2Config()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["config"] = asdict(config)  # plain dicts: checkpoints load with weights_only
        if config.freeze_vision:
            check_frozen_weights(config.vision, "model.init_args.config.vision.weights")
        self.model = Blip2ForPretraining(config, gather_with_grad, positives, itg_cache)
        if init_weights and is_bert(init_weights):  # the paper's start: bert-base-uncased
            report_init_weights(init_weights, load_bert_into_qformer(self.model.blip2, init_weights))
        elif init_weights:
            state = load_state_dict_file(init_weights)
            state = {k.removeprefix("model.").removeprefix("blip2."): v for k, v in state.items()}
            missing, unexpected = self.model.blip2.load_state_dict(state, strict=False)
            frozen = [k for k in missing if k.startswith("image_encoder.visual_encoder.")]
            missing = [k for k in missing if k not in frozen]
            if missing or unexpected:
                raise KeyError(
                    f"init_weights {init_weights}: missing keys {missing}, unexpected keys {unexpected}"
                )
            report = LoadReport(
                loaded=sorted(state), missing_expected=frozen
            )  # the frozen ViT: its own weights
            report_init_weights(init_weights, report)
        self.negative_sampler = NegativeSampler(pool="global")

    def configure_callbacks(self) -> list:
        present = self.trainer.callbacks if self._trainer is not None else []
        if any(isinstance(c, HardNegativeMining) for c in present):
            return []
        return [HardNegativeMining(pool="global")]

    def trainable_module(self) -> nn.Module:
        return self.model

    def no_weight_decay(self) -> set[str]:
        return {f"blip2.{name}" for name in self.model.blip2.no_weight_decay()}

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("model.blip2.image_encoder.visual_encoder.",) if self.model.blip2.config.freeze_vision else ()

    def frozen_sources(self) -> dict:
        return {"model.blip2.image_encoder.visual_encoder.": asdict(self.model.blip2.config.vision)}

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.model.clamp_temperature_()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.model(
            batch["image"],
            batch["input_ids"],
            batch["attention_mask"],
            image_ids=batch.get("image_id"),
            negative_sampler=self.negative_sampler,
        )
        losses = {"loss_itc": out.loss_itc, "loss_itm": out.loss_itm, "loss_itg": out.loss_lm}
        loss = self.log_losses(losses, batch["input_ids"].shape[0], temp=out.temp)
        self.log_skipped(batch)
        return loss

    # evaluation (ITCRetrievalEval) ------------------------------------------------------------------
    def retrieval_features(self, batch: dict) -> tuple[Tensor, Tensor]:
        blip2 = self.model.blip2
        return blip2.encode_image(batch["image"]), blip2.encode_text(
            batch["input_ids"], batch["attention_mask"]
        )
