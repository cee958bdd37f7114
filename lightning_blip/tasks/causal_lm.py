"""``CausalLMTraining``: next-token training of a transformers causal LM on plain text."""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_blip.losses.lm import IGNORE_INDEX
from lightning_blip.tasks.base import BlipTask, default_optimizer


class CausalLMTraining(BlipTask):
    """Train ``llm`` on batches of strings (a ``DataLoader`` over a list of texts, ``collate_fn=list``).

    Each batch is tokenised here with right padding; padding is not scored. Logs ``train/loss``.

    Args:
        llm: any ``AutoModelForCausalLM`` model.
        tokenizer: its tokenizer (with a pad token).
        max_length: texts are truncated to this many tokens.
        optimizer: optimiser callable.
        lr_scheduler: schedule callable, stepped every step.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 64,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.llm, self.tokenizer, self.max_length = llm, tokenizer, max_length

    def trainable_module(self) -> nn.Module:
        return self.llm

    def training_step(self, batch: list[str], batch_idx: int) -> Tensor:
        tokens = self.tokenizer(
            batch,
            padding="longest",
            padding_side="right",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, IGNORE_INDEX)
        loss = self.llm(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, labels=labels).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss
