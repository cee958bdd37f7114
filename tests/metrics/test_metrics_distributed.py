"""On 2 gloo ranks with a DistributedSampler's padding, every metric equals its 1-process value."""

from __future__ import annotations

import pytest
import torch
from caption_data import generated_captions
from dist_utils import run_distributed
from torch.utils.data import DistributedSampler

from lightning_blip.metrics import CIDErScore, COCOBLEUScore, COCOROUGELScore, RetrievalRecall, VQAAccuracy

N = 9  # odd: rank 1's shard is padded with a repeat of item 0


def _data() -> dict:
    torch.manual_seed(0)
    image = torch.randn(N, 8)
    refs = [generated_captions(5, seed=10 + i) for i in range(N)]
    preds = generated_captions(N, seed=5)
    return {
        "preds": [f"{r[0]}!" if i % 2 else p for i, (p, r) in enumerate(zip(preds, refs))],
        "refs": refs,
        "answers": [["2"] * 3 + ["3"] * 7, ["yes"] * 10, ["red"] * 2 + ["blue"] * 8] * 3,
        "answer_preds": ["two", "yes", "red", "3", "no", "blue", "2", "yes", "red"],
        "types": ["number", "yes/no", "other"] * 3,
        # pair rows: image i // 3's features with a noisy caption feature
        "image": image[torch.arange(N) // 3],
        "text": image[torch.arange(N) // 3] + torch.randn(N, 8),
        "image_ids": torch.arange(N) // 3,
    }


def _metrics() -> dict:
    return {
        "bleu": COCOBLEUScore(),
        "cider": CIDErScore(),
        "rouge": COCOROUGELScore(),
        "vqa": VQAAccuracy(),
        "retrieval": RetrievalRecall(),
    }


def _evaluate(indices: list[int], batch_size: int) -> dict:
    data, metrics = _data(), _metrics()
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        ids = torch.tensor(idx)
        for name in ("bleu", "cider", "rouge"):
            metrics[name].update([data["preds"][i] for i in idx], [data["refs"][i] for i in idx], ids=ids)
        metrics["vqa"].update(
            [data["answer_preds"][i] for i in idx],
            [data["answers"][i] for i in idx],
            answer_types=[data["types"][i] for i in idx],
            ids=ids,
        )
        metrics["retrieval"].update(data["image"][ids], data["text"][ids], data["image_ids"][ids], index=ids)
    return {name: metric.compute() for name, metric in metrics.items()}


def _worker(rank: int, world: int, path) -> None:
    indices = list(DistributedSampler(range(N), num_replicas=world, rank=rank, shuffle=False))
    assert rank == 0 or indices[-1] == 0  # rank 1 gets the padding repeat
    torch.save(_evaluate(indices, batch_size=2), f"{path}.{rank}")


def _flat(result: dict) -> dict[str, float]:
    flat = {}
    for name, value in result.items():
        if isinstance(value, dict):
            flat |= {f"{name}/{k}": v.item() for k, v in value.items()}
        else:
            flat |= {f"{name}/{i}": v for i, v in enumerate(value.reshape(-1).tolist())}
    return flat


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path):
    run_distributed(_worker, 2, tmp_path / "r")
    expected = _flat(_evaluate(list(range(N)), batch_size=N))
    assert expected["cider/0"] > 0.1 and 0 < expected["vqa/overall"] < 1
    for rank in range(2):
        assert _flat(torch.load(f"{tmp_path / 'r'}.{rank}")) == pytest.approx(expected, abs=1e-12)


def _empty_rank_worker(rank: int, world: int, path) -> None:
    """Rank 0 evaluates everything, rank 1 nothing (e.g. every image of its shard unreadable)."""
    data, metrics = _data(), _metrics()
    if rank == 0:
        for name in ("bleu", "cider", "rouge"):
            metrics[name].update(data["preds"], data["refs"], ids=torch.arange(N))
        metrics["vqa"].update(data["answer_preds"], data["answers"], data["types"], ids=torch.arange(N))
        metrics["retrieval"].update(data["image"], data["text"], data["image_ids"], index=torch.arange(N))
    torch.save({name: metric.compute() for name, metric in metrics.items()}, f"{path}.{rank}")


@pytest.mark.slow
def test_a_rank_without_data_still_syncs(tmp_path):
    """torchmetrics fills an empty rank's list states with float32 (and the features' trailing shape is
    unknown there): the gather must not abort."""
    run_distributed(_empty_rank_worker, 2, tmp_path / "e")
    expected = _flat(_evaluate(list(range(N)), batch_size=N))
    for rank in range(2):
        assert _flat(torch.load(f"{tmp_path / 'e'}.{rank}")) == pytest.approx(expected, abs=1e-12)
