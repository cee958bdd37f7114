"""Base class of the COCO caption metrics: gather every rank's captions, dedupe by id, score the whole set."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_blip.metrics.caption_tokenizer import Backend, check_backend, tokenize_captions
from lightning_blip.metrics.sync import (
    IdsLike,
    TypedListMetric,
    cat_state,
    decode_texts,
    encode_texts,
    first_occurrence,
    ids_tensor,
)

_STATES = {
    "pred_bytes": torch.uint8,
    "pred_lengths": torch.int64,
    "ref_bytes": torch.uint8,
    "ref_lengths": torch.int64,
    "num_refs": torch.int64,
    "ids": torch.int64,
}


class CaptionMetric(TypedListMetric):
    """Collects ``(prediction, references, id)`` per image; :meth:`compute` scores the whole set.

    Corpus-level scores (CIDEr-D's document frequency, BLEU's length sums) depend on every image, so
    nothing is scored per batch or per rank: the raw captions are kept as UTF-8 byte tensors (list
    states with ``dist_reduce_fx="cat"``, so torchmetrics' own sync gathers them), and ``compute``
    drops repeated ids (the padding of a ``DistributedSampler``), tokenises and calls :meth:`_score`.

    Args:
        tokenizer: ``"python"`` (pure-Python PTB tokenizer) or ``"java"`` (pycocoevalcap's Stanford
            tokenizer, needs Java); see :mod:`lightning_blip.metrics.caption_tokenizer`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tokenizer: Backend = "python", **kwargs) -> None:
        super().__init__(**kwargs)
        check_backend(tokenizer)
        self.tokenizer = tokenizer
        for name, dtype in _STATES.items():
            self.add_list_state(name, dtype)

    def update(
        self, preds: Sequence[str], target: Sequence[Sequence[str]], ids: IdsLike | None = None
    ) -> None:
        """``B`` generated captions, ``B`` lists of reference captions, optional ``(B,)`` image ids.

        With ids, an id seen again (on any rank) is ignored; without, every entry counts.
        """
        if isinstance(preds, str) or len(preds) != len(target):
            raise ValueError(
                f"preds must be a list of strings as long as target, got {len(preds)} vs {len(target)}"
            )
        if any(isinstance(refs, str) or len(refs) == 0 for refs in target):
            raise ValueError("each target entry must be a non-empty list of reference captions")
        device = self.device
        for name, value in zip(
            _STATES,
            (
                *encode_texts(preds, device),
                *encode_texts([r for refs in target for r in refs], device),
                torch.tensor([len(refs) for refs in target], dtype=torch.int64, device=device),
                ids_tensor(ids, len(preds), device),
            ),
        ):
            getattr(self, name).append(value)

    def captions(self) -> tuple[list[str], list[list[str]]]:
        """Tokenised ``(predictions, references)`` of the unique ids, as space-joined token strings."""
        state = {name: cat_state(getattr(self, name)) for name in _STATES}
        if state["num_refs"].numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() needs at least one update")
        preds = decode_texts(state["pred_bytes"], state["pred_lengths"])
        flat_refs = decode_texts(state["ref_bytes"], state["ref_lengths"])
        keep = first_occurrence(state["ids"]).tolist()
        refs = _split(flat_refs, state["num_refs"].tolist())
        preds = [p for p, k in zip(preds, keep) if k]
        refs = [r for r, k in zip(refs, keep) if k]
        # one tokenizer call for everything (one Java start with tokenizer="java")
        tokens = tokenize_captions(preds + [r for rs in refs for r in rs], backend=self.tokenizer)
        return tokens[: len(preds)], _split(tokens[len(preds) :], [len(rs) for rs in refs])

    def compute(self) -> Tensor:
        return self._score(*self.captions())

    @abstractmethod
    def _score(self, preds: list[str], refs: list[list[str]]) -> Tensor:
        """Score tokenised captions: ``N`` predictions, ``N`` lists of references."""


def _split(flat: list[str], counts: list[int]) -> list[list[str]]:
    """Cut ``flat`` into consecutive groups of ``counts[i]`` items."""
    groups, start = [], 0
    for count in counts:
        groups.append(flat[start : start + count])
        start += count
    return groups
