"""Metric states that sync across ranks: strings as byte tensors, ids, and removing padding duplicates.

torchmetrics gathers list states of tensors with ``dist_reduce_fx="cat"``: each state becomes the
concatenation of every rank's tensors in rank order, so states updated together stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

IdsLike = Sequence[int] | Tensor


def encode_texts(texts: Sequence[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``N`` strings -> (their UTF-8 bytes concatenated ``(sum L_i,)`` uint8, lengths ``(N,)`` int64)."""
    encoded = [t.encode("utf-8") for t in texts]
    raw = b"".join(encoded)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
    return data.to(device), lengths.to(device)


def decode_texts(data: Tensor, lengths: Tensor) -> list[str]:
    """Inverse of :func:`encode_texts`."""
    raw = data.to(device="cpu", dtype=torch.uint8).numpy().tobytes()
    texts, start = [], 0
    for length in lengths.tolist():
        end = start + int(length)
        texts.append(raw[start:end].decode("utf-8"))
        start = end
    return texts


def ids_tensor(ids: IdsLike | None, n: int, device: torch.device | None = None) -> Tensor:
    """``(n,)`` int64 ids for a batch of ``n`` entries; ``-1`` (never deduplicated) when ``ids`` is None."""
    if ids is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    out = torch.as_tensor(ids, dtype=torch.int64, device=device).reshape(-1)
    if out.numel() != n:
        raise ValueError(f"got {out.numel()} ids for {n} entries")
    if (out < 0).any():
        raise ValueError("ids must be non-negative")
    return out


def first_occurrence(ids: Tensor) -> Tensor:
    """``(N,)`` ids -> ``(N,)`` bool, True at the first entry of each id (and at every negative id).

    Drops the repeats that a ``DistributedSampler`` adds to pad the last batch.
    """
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    first_sorted = torch.ones_like(sorted_ids, dtype=torch.bool)
    first_sorted[1:] = sorted_ids[1:] != sorted_ids[:-1]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[order[first_sorted]] = True
    return keep | (ids < 0)


def cat_state(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` state as one tensor: a list (before a sync, possibly empty) or a tensor (after)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.empty(0)


class TypedListMetric(Metric):
    """A ``Metric`` whose list states each have one dtype, so that a rank that saw no data still syncs.

    torchmetrics gives an empty list state an empty tensor of the metric's dtype (float32) before
    gathering; next to the other ranks' uint8 or int64 tensors the gather then fails (gloo aborts).
    Here an empty state gets an empty tensor of its own dtype instead. 1-D states only: an empty
    rank cannot know the trailing shape of a feature state.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._list_dtypes: dict[str, torch.dtype] = {}

    def add_list_state(self, name: str, dtype: torch.dtype) -> None:
        """A ``cat``-reduced list state of 1-D ``dtype`` tensors."""
        self.add_state(name, default=[], dist_reduce_fx="cat")
        self._list_dtypes[name] = dtype

    def sync(self, *args, **kwargs) -> None:
        for name, dtype in self._list_dtypes.items():
            state = getattr(self, name)
            if not state:
                state.append(torch.empty(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)
