"""``VQAFinetune``: BLIP's VQA fine-tuning and evaluation as a LightningModule."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_blip.data.vqa import load_answer_list
from lightning_blip.metrics.vqa import ANSWER_TYPES, VQAAccuracy
from lightning_blip.models.blip import BlipConfig, BlipVQA
from lightning_blip.models.blip.vqa import InferenceMode, tokenize_answers
from lightning_blip.models.shared.generation import decode_captions
from lightning_blip.models.shared.tokenizer import build_tokenizer
from lightning_blip.tasks.base import BlipTask, default_optimizer, report_init_weights


class VQAFinetune(BlipTask):
    """VQA fine-tuning of BLIP: a thin layer over :class:`~lightning_blip.models.blip.vqa.BlipVQA`.

    Training loss: each answer's label-smoothed cross entropy, weighted by its share of the
    annotators (the data sets the weights), summed and divided by the batch size (BLIP's loss).
    Validation and test answer with ``inference`` and log the official VQA accuracy
    (``val/vqa_acc``, per answer type ``val/vqa_acc_<type>`` when the data gives types); predict
    returns ``{"question_id", "answer"}`` per batch.

    Args:
        config: the ViT and the text transformer (both text models share ``config.text``).
        inference: ``"rank"`` the answer list (BLIP's VQAv2 setting) or ``"generate"``.
        k_test: candidates scored per question when ranking (BLIP: 128).
        max_answer_length: generated tokens at most, [DEC] included (BLIP: 10).
        min_answer_length: [SEP] is suppressed before this many tokens (BLIP: 1).
        num_beams: generation beams (BLIP: 3; 1 = greedy).
        answer_list: ``.json`` list of candidate answers; None takes the DataModule's ``answer_list``.
        init_weights: a pretrained MED (``BlipModel`` / ``MEDPretrain`` weights) or a VQA checkpoint.
        vocab: tokenizer vocabulary (None: the bundled bert-base-uncased one).
        optimizer: optimiser callable (the recipe's ``optimizer:``).
        lr_scheduler: schedule callable (the recipe's ``lr_scheduler:``), stepped every step.
    """

    def __init__(
        self,
        config: BlipConfig | None = None,
        inference: InferenceMode = "rank",
        k_test: int = 128,
        max_answer_length: int = 10,
        min_answer_length: int = 1,
        num_beams: int = 3,
        answer_list: str | None = None,
        init_weights: str | None = None,
        vocab: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = BlipConfig.from_dict(config)
        if inference not in ("rank", "generate"):
            raise ValueError(f"inference must be 'rank' or 'generate', got {inference!r}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # plain dicts, so a checkpoint loads with torch.load(weights_only=True)
        self.hparams["config"] = asdict(config) if config is not None else None
        self.model = BlipVQA(config)
        if init_weights:
            report_init_weights(init_weights, self.model.load_pretrained(init_weights))
        self.inference = inference
        self.k_test = k_test
        self.max_answer_length = max_answer_length
        self.min_answer_length = min_answer_length
        self.num_beams = num_beams
        self.answer_list_path = answer_list
        self.tokenizer = build_tokenizer(vocab)
        self.val_accuracy = VQAAccuracy()
        self.test_accuracy = VQAAccuracy()
        self._answer_list: list[str] | None = None
        self._candidates: tuple[Tensor, Tensor] | None = None

    def trainable_module(self) -> nn.Module:
        return self.model

    def no_weight_decay(self) -> set[str]:
        return self.model.no_weight_decay()

    # training ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.model.loss(
            batch["image"],
            batch["question_ids"],
            batch["question_mask"],
            batch["answer_ids"],
            batch["answer_mask"],
            batch["n_answers"],
            batch["weights"],
        )
        loss = self.log_losses({"loss_vqa": loss}, batch["image"].shape[0])
        self.log_skipped(batch)
        return loss

    # inference ---------------------------------------------------------------------------------------
    def answer_list(self) -> list[str]:
        """The ranking candidates: ``answer_list`` if given, else the attached DataModule's."""
        if self._answer_list is None:
            if self.answer_list_path:
                self._answer_list = load_answer_list(self.answer_list_path)
            else:
                datamodule = self.trainer.datamodule if self._trainer is not None else None
                self._answer_list = getattr(datamodule, "answer_list", None)
            if not self._answer_list:
                raise ValueError("inference='rank' needs an answer list (answer_list, or the DataModule's)")
        return self._answer_list

    def candidates(self) -> tuple[Tensor, Tensor]:
        """The answer list's ids and mask ``(C, Lc)``, tokenised once, on this module's device."""
        if self._candidates is None or self._candidates[0].device != self.device:
            ids, mask = tokenize_answers(self.tokenizer, self.answer_list())
            self._candidates = (ids.to(self.device), mask.to(self.device))
        return self._candidates

    def predict_answers(self, batch: dict) -> list[str]:
        """One answer string per question of the batch, by ``inference``."""
        model = self.model
        question = model.encode_questions(
            model.encode_image(batch["image"]), batch["question_ids"], batch["question_mask"]
        )
        if self.inference == "generate":
            ids = model.generate_answers(
                question, self.max_answer_length, self.min_answer_length, self.num_beams
            )
            return decode_captions(self.tokenizer, ids)
        answers = self.answer_list()
        best = model.rank_answers(question, *self.candidates(), k=self.k_test)
        return [answers[i] for i in best.tolist()]

    def _evaluate(self, batch: dict, metric: VQAAccuracy) -> None:
        if batch["image"].shape[0] == 0:
            return
        types = batch.get("answer_type")
        if types is not None:  # a question without a known type counts in the overall accuracy only
            types = [t if t in ANSWER_TYPES else None for t in types]
        metric.update(self.predict_answers(batch), batch["gt_answers"], types, ids=batch["index"])

    def _log_accuracy(self, metric: VQAAccuracy, prefix: str) -> None:
        if not self.any_rank(metric.update_count > 0):  # nothing evaluated anywhere
            return
        for name, value in metric.compute().items():
            key = f"{prefix}/vqa_acc" if name == "overall" else f"{prefix}/vqa_acc_{name.replace('/', '_')}"
            self.log(key, value.float(), prog_bar=name == "overall")
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_accuracy)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_accuracy, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_accuracy, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """``{"index": (B,), "question_id": list, "answer": list[str]}`` for the batch's questions."""
        answers = self.predict_answers(batch) if batch["image"].shape[0] else []
        return {"index": batch["index"], "question_id": batch["question_id"], "answer": answers}
