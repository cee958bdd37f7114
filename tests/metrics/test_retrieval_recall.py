"""retrieval_recall and RetrievalRecall against a plain loop over ranked lists."""

from __future__ import annotations

import pytest
import torch

from lightning_blip.metrics import RetrievalRecall, retrieval_recall


def _plain(sim: torch.Tensor, txt2img: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Sort every row and column and look for the ground truth, as LAVIS's report does."""
    n_img, n_txt = sim.shape
    out = {}
    for k in ks:
        hits = 0
        for i in range(n_img):
            ranked = sorted(range(n_txt), key=lambda j: -sim[i, j].item())
            hits += any(txt2img[j] == i for j in ranked[:k])
        out[f"txt_r{k}"] = hits / n_img
        hits = 0
        for j in range(n_txt):
            ranked = sorted(range(n_img), key=lambda i: -sim[i, j].item())
            hits += txt2img[j] in ranked[:k]
        out[f"img_r{k}"] = hits / n_txt
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def _pairs(n_img: int = 40, per_image: int = 5, dim: int = 16, noise: float = 2.0):
    """Image features, their captions' features (noisy copies) and each caption's image."""
    torch.manual_seed(0)
    image = torch.randn(n_img, dim)
    txt2img = torch.arange(n_img).repeat_interleave(per_image)
    text = image[txt2img] + noise * torch.randn(len(txt2img), dim)
    return image, text, txt2img


def test_matches_a_plain_loop():
    image, text, txt2img = _pairs()
    sim = image @ text.t()
    result = retrieval_recall(sim, txt2img)
    expected = _plain(sim, txt2img.tolist())
    assert result == pytest.approx(expected, abs=1e-12)
    assert 0.1 < result["img_r1"] < result["img_r10"] < 1  # neither trivial nor saturated
    assert set(result) == {f"{d}_r{k}" for d in ("txt", "img") for k in (1, 5, 10)} | {
        "txt_r_mean",
        "img_r_mean",
        "r_mean",
    }


def test_uneven_texts_per_image():
    torch.manual_seed(1)
    txt2img = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 9])
    sim = torch.randn(10, len(txt2img))
    assert retrieval_recall(sim, txt2img) == pytest.approx(_plain(sim, txt2img.tolist()), abs=1e-12)
    with pytest.raises(ValueError, match="at least one text"):
        retrieval_recall(sim[:, :-2], txt2img[:-2])  # image 9 has no text left


def test_metric_from_pair_rows_with_padding():
    image, text, txt2img = _pairs(n_img=12, per_image=3)
    expected = retrieval_recall(image @ text.t(), txt2img)
    rows = torch.randperm(len(txt2img))  # pair rows in any order, images repeated once per caption
    metric = RetrievalRecall()
    for batch in rows.split(7):
        metric.update(image[txt2img[batch]], text[batch], image_ids=100 + txt2img[batch], index=batch)
    padding = rows[:3]  # a distributed sampler's repeats
    metric.update(image[txt2img[padding]], text[padding], image_ids=100 + txt2img[padding], index=padding)
    got = metric.compute()
    assert {k: v.item() for k, v in got.items()} == pytest.approx(expected, abs=1e-12)


def test_metric_with_query_features_and_a_shape_change():
    """BLIP-2's (B, Q, E) image features keep their shape through the flattened state; features of
    another shape in a later update fail, naming both shapes."""
    torch.manual_seed(2)
    queries = torch.randn(6, 4, 8)  # 6 images, 4 queries each
    txt2img = torch.arange(6).repeat_interleave(2)
    text = queries[txt2img, 0] + 0.5 * torch.randn(12, 8)

    def max_over_queries(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.einsum("iqe,te->iqt", image, text).amax(1)

    metric = RetrievalRecall(similarity=max_over_queries)
    for batch in torch.arange(12).split(5):
        metric.update(queries[txt2img[batch]], text[batch], image_ids=txt2img[batch], index=batch)
    expected = retrieval_recall(max_over_queries(queries, text), txt2img)
    assert {k: v.item() for k, v in metric.compute().items()} == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match=r"image features of shape \(8,\) after \(4, 8\)"):
        metric.update(queries[:2, 0], text[:2], image_ids=txt2img[:2])
