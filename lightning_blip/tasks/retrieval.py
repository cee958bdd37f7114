"""Retrieval fine-tuning (COCO, Flickr30k) of BLIP and of the BLIP-2 stage-1 model, with re-ranked evaluation."""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_blip.callbacks import HardNegativeMining, MomentumEncoder
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.blip.pretraining import MiningFeatures
from lightning_blip.models.blip2 import Blip2Config, Blip2Model
from lightning_blip.models.shared.positives import Positives
from lightning_blip.tasks.base import default_optimizer
from lightning_blip.tasks.pretrain import MEDPretrain
from lightning_blip.tasks.qformer_stage1 import QFormerStage1
from lightning_blip.tasks.rerank_eval import RerankRetrievalEval


class RetrievalFinetune(RerankRetrievalEval, MEDPretrain):
    """BLIP retrieval fine-tuning: pretraining's ITC and ITM without the LM loss.

    ITC with the queue and momentum distillation (alpha ramped over the first epoch, as
    salesforce/BLIP's ``train_retrieval.py``; LAVIS ramps over two), the pairs of one image id as
    positives; ITM on hard negatives mined from the online ITC similarities (BLIP retrieval). By
    default the negatives are sampled from every rank's batch with weights ``softmax(sim)``
    without BLIP pretraining's ``+1e-4`` (``HardNegativeMining(pool="global", epsilon=0)``: BLIP's
    COCO config, ``negative_all_rank``; its Flickr30k config mines locally); a recipe's callback
    takes precedence. The decoder-only weights stay fixed.

    Evaluation re-ranks the top ``k_test`` ITC candidates with ITM
    (:class:`~lightning_blip.tasks.rerank_eval.RerankRetrievalEval`); use
    :class:`~lightning_blip.data.retrieval.RetrievalDataModule`.

    Args:
        config: the MED model.
        queue_size: ITC queue length (BLIP: 57,600).
        alpha: momentum distillation weight (BLIP: 0.4).
        alpha_ramp_epochs: alpha grows linearly from 0 over this many epochs (salesforce/BLIP: 1).
        gather_keys: the current batch's momentum ITC keys come from every rank (False: this rank's
            only, as salesforce/BLIP).
        positives: ITC positives; ``"image_id"`` as LAVIS's ``blip_retrieval.py`` (salesforce/BLIP's
            ``blip_retrieval.py`` overwrites its image-id targets with the diagonal, i.e. ``"pair"``,
            and keeps image ids for the queue and the ITM negatives only; BLIP issue #41).
        mining_features: ``"online"`` (BLIP retrieval) or ``"momentum"`` (BLIP pretraining).
        k_test: ITC candidates re-ranked with ITM per query (BLIP: 256 COCO, 128 Flickr30k).
        rerank_batch_size: candidate texts per ITM pass in evaluation.
        init_weights: local weights of the MED model (a pretrained BLIP checkpoint or state dict).
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: BlipConfig | None = None,
        queue_size: int = 57600,
        alpha: float = 0.4,
        alpha_ramp_epochs: float = 1.0,
        gather_keys: bool = True,
        positives: Positives = "image_id",
        mining_features: MiningFeatures = "online",
        k_test: int = 256,
        rerank_batch_size: int = 256,
        init_weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            config,
            queue_size=queue_size,
            alpha=alpha,
            alpha_ramp_epochs=alpha_ramp_epochs,
            gather_keys=gather_keys,
            positives=positives,
            lm_loss=False,
            mining_features=mining_features,
            init_weights=init_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.k_test = k_test
        self.rerank_batch_size = rerank_batch_size
        self.negative_sampler = NegativeSampler(pool="global", epsilon=0.0)

    def default_callbacks(self) -> list:
        return [MomentumEncoder(), HardNegativeMining(pool="global", epsilon=0.0)]

    def retrieval_model(self) -> BlipModel:
        return self.model.blip


class QFormerRetrievalFinetune(RerankRetrievalEval, QFormerStage1):
    """BLIP-2 retrieval fine-tuning: the stage-1 objectives (ITC, ITM, ITG) of :class:`QFormerStage1`,
    usually with the image encoder trained too (``config.freeze_vision=False``, as LAVIS's COCO
    fine-tune), and re-ranked evaluation: ITC (max over queries) of every pair, then ITM (the
    query-averaged match logit) on the top ``k_test`` (LAVIS: 128).

    Args:
        config: ViT + Q-Former.
        gather_with_grad: ITC features of the other ranks carry gradient (False: LAVIS).
        positives: ITC positives and ITM exclusions; ``"image_id"`` as LAVIS's COCO fine-tuning
            (the pairs of one image are ITC positives and never ITM negatives; LAVIS's first BLIP-2
            release used the pair only, ``"pair"``).
        itg_cache: ITG on the cached query keys/values.
        k_test: ITC candidates re-ranked with ITM per query.
        rerank_batch_size: candidate texts per ITM pass in evaluation.
        init_weights: local weights of the Q-Former side (a stage-1 checkpoint or state dict).
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: Blip2Config | None = None,
        gather_with_grad: bool = True,
        positives: Positives = "image_id",
        itg_cache: bool = True,
        k_test: int = 128,
        rerank_batch_size: int = 128,
        init_weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            config,
            gather_with_grad=gather_with_grad,
            positives=positives,
            itg_cache=itg_cache,
            init_weights=init_weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
        )
        self.k_test = k_test
        self.rerank_batch_size = rerank_batch_size

    def retrieval_model(self) -> Blip2Model:
        return self.model.blip2
