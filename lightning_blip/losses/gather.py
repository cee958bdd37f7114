"""Gathering tensors across ranks, with or without gradient; no-ops outside torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank along dim 0 -> ``(W * B, ...)``, no gradient.

    Every rank must pass the same shape (use ``drop_last=True`` for training loaders).
    """
    _, world = rank_and_world()
    if world == 1:
        return x.detach()
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of each rank's rows.

    The backward is an all-reduce of the (contiguous) full gradient and a slice: it works on every
    backend (gloo has no reduce-scatter), and, unlike ``torch.distributed.nn.all_gather`` on gloo,
    is correct when autograd hands it a non-contiguous gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Like :func:`all_gather_no_grad` but gradients flow back to every rank's ``x``.

    In backward each rank receives the sum over ranks of the gradients of its rows, so with DDP's
    gradient averaging the result equals the gradient of the global-batch loss on one rank.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks (no gradient)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def global_token_mean(total: Tensor, count: Tensor) -> Tensor:
    """This rank's loss sum over the tokens of every rank, times the world size: with DDP's gradient
    averaging, the gradient of the mean over the global batch's tokens. An all-reduce: every rank
    calls it, one without tokens with ``total = count = 0``."""
    return total * rank_and_world()[1] / all_reduce_sum(count).clamp(min=1)


def no_tokens(device: torch.device) -> tuple[Tensor, Tensor]:
    """``(total, count)`` of a rank without tokens, for :func:`global_token_mean`."""
    count = torch.zeros((), dtype=torch.long, device=device)
    return count.float(), count


def all_gather_padded(ids: Tensor, mask: Tensor, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Gather token ids and masks ``(B, L_rank)`` whose length differs per rank -> ``(W * B, L_max)``."""
    _, world = rank_and_world()
    if world == 1:
        return ids, mask
    length = all_reduce_max(ids.shape[1], ids.device)
    ids, mask = pad_to(ids, length, pad_id), pad_to(mask, length, 0)
    return all_gather_no_grad(ids), all_gather_no_grad(mask)


def all_reduce_max(value: int, device: torch.device) -> int:
    """Largest ``value`` over ranks."""
    t = torch.tensor(value, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def pad_to(x: Tensor, length: int, value: int) -> Tensor:
    """Right-pad ``(B, L)`` to ``(B, length)`` with ``value``."""
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B_rank, ...)`` from every rank along dim 0 when B differs per rank, no gradient.

    Returns ``(sum of B_rank, ...)`` in rank order; the trailing dimensions must agree.
    """
    _, world = rank_and_world()
    if world == 1:
        return x.detach()
    sizes = all_gather_no_grad(torch.tensor([x.shape[0]], device=x.device)).tolist()
    padded = x.detach().new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    gathered = all_gather_no_grad(padded).unflatten(0, (world, max(sizes)))
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def all_gather_row_dicts(local: dict[str, Tensor] | None, device: torch.device) -> dict[str, Tensor] | None:
    """Every rank's ``{name: (B_rank, ...)}`` concatenated along dim 0 in rank order (no gradient).

    ``B_rank`` may differ and may be 0: a rank with no rows passes ``None`` and takes the trailing
    shapes and dtypes from the others. Returns ``None`` when no rank has any.
    """
    _, world = rank_and_world()
    if world == 1:
        return local
    specs: list = [None] * world
    dist.all_gather_object(
        specs, None if local is None else {k: (v.shape[1:], v.dtype) for k, v in local.items()}
    )
    spec = next((s for s in specs if s is not None), None)
    if spec is None:
        return None
    if local is None:
        local = {
            k: torch.zeros((0, *shape), dtype=dtype, device=device) for k, (shape, dtype) in spec.items()
        }
    return {k: all_gather_rows(local[k]) for k in spec}
