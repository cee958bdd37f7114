"""recall_at_1 against a plain loop, with duplicate rows from distributed padding."""

from __future__ import annotations

import torch

from lightning_blip.metrics.retrieval import recall_at_1


def _plain(image, text, ids):
    sim = image @ text.t()
    n = len(ids)
    i2t = sum(ids[max(range(n), key=lambda j: sim[i, j])] == ids[i] for i in range(n)) / n
    t2i = sum(ids[max(range(n), key=lambda i: sim[i, j])] == ids[j] for j in range(n)) / n
    return float(i2t), float(t2i)


def test_matches_a_plain_loop():
    torch.manual_seed(0)
    image, text = torch.randn(30, 8), torch.randn(30, 8)
    text[:10] = image[:10] + 0.01 * torch.randn(10, 8)  # a third retrieves its own pair
    ids = torch.arange(30) % 7
    r = recall_at_1(image, text, ids)
    assert (r["i2t_r1"], r["t2i_r1"]) == _plain(image, text, ids)
    assert r["i2t_r1"] > 0.25  # well above chance (1/7)


def test_distributed_padding_duplicates_are_dropped():
    torch.manual_seed(0)
    image, text, ids = torch.randn(6, 4), torch.randn(6, 4), torch.arange(6)
    index = torch.arange(6)
    padded = [torch.cat([t, t[:2]]) for t in (image, text, ids, index)]
    assert recall_at_1(*padded) == recall_at_1(image, text, ids)


def test_image_to_text_counts_each_image_once():
    """Image 0 has 3 captions and retrieves one of them; image 1 has 1 caption and misses it."""
    image = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])  # every text prefers image 0
    ids = torch.tensor([0, 0, 0, 1])
    per_image = recall_at_1(image, text, ids, image_ids=ids)
    assert per_image == {"i2t_r1": 0.5, "t2i_r1": 0.75}
    assert recall_at_1(image, text, ids)["i2t_r1"] == 0.75  # every row its own image: pairs counted
    index = torch.arange(4)
    padded = [torch.cat([t, t[:2]]) for t in (image, text, ids, index)]
    assert recall_at_1(*padded[:3], padded[3], image_ids=padded[2]) == per_image
