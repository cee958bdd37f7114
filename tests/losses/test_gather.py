"""Gathers across 2 gloo ranks: the gradient of a gathered tensor reaches every rank's rows."""

from __future__ import annotations

import torch
from dist_utils import run_distributed

from lightning_blip.losses.gather import all_gather_padded, all_gather_with_grad


def _worker(rank, world, path):
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = all_gather_with_grad(x)
    assert torch.equal(gathered[2 * rank : 2 * rank + 2], x.detach())
    # a transposed (non-contiguous) upstream gradient: torch.distributed.nn's gloo path got this wrong
    coef = (torch.arange(12.0).view(3, 4) * (rank + 1)).t()
    (gathered * coef).sum().backward()
    ids, mask = all_gather_padded(
        torch.ones(1, 2 + rank, dtype=torch.long), torch.ones(1, 2 + rank, dtype=torch.long)
    )
    torch.save({"grad": x.grad, "ids": ids, "mask": mask}, f"{path}.{rank}")


def test_all_gather_with_grad_sums_every_ranks_gradient(tmp_path):
    run_distributed(_worker, 2, tmp_path / "r")
    coef = torch.arange(12.0).view(3, 4).t()
    expected = coef * 1 + coef * 2  # d/dx of sum over ranks r of (r + 1) * coef . gathered
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'r'}.{rank}")
        torch.testing.assert_close(got["grad"], expected[2 * rank : 2 * rank + 2])
        assert got["ids"].tolist() == [[1, 1, 0], [1, 1, 1]] and got["mask"].tolist() == [
            [1, 1, 0],
            [1, 1, 1],
        ]
