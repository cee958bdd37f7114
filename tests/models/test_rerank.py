"""ITM re-ranking of the ITC top k (BLIP / BLIP-2 evaluation) and the retrieval inference calls."""

from __future__ import annotations

import pytest
import torch
from conftest import text_batch, tiny_blip, tiny_blip2
from dist_utils import run_distributed

from lightning_blip.metrics.retrieval import retrieval_recall
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.blip2 import Blip2Model
from lightning_blip.models.shared.retrieval import NOT_RANKED, rerank, score_pairs

TXT2IMG = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5])  # 6 images, 13 captions


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def _model(kind: str):
    torch.manual_seed(0)
    return (BlipModel(tiny_blip()) if kind == "blip" else Blip2Model(tiny_blip2())).eval()


def _data():
    torch.manual_seed(1)
    pixel_values = torch.randn(6, 3, 32, 32)
    ids, mask = text_batch(len(TXT2IMG), 9)
    return pixel_values, ids, mask


@torch.no_grad()
def _features(model, pixel_values, ids, mask):
    image_embeds = model.forward_image(pixel_values)
    return image_embeds, model.encode_image_embeds(image_embeds), model.encode_text(ids, mask)


@torch.no_grad()
def _naive(model, pixel_values, ids, mask, k):
    """BLIP's evaluation written out pair by pair: ViT and ITM again for every top-k pair."""
    sim = model.similarity(model.encode_image(pixel_values), model.encode_text(ids, mask))
    i2t, t2i = torch.full_like(sim, -100.0), torch.full_like(sim, -100.0)

    def itm(i: int, j: int) -> float:
        image_embeds = model.forward_image(pixel_values[i : i + 1])
        return model.itm_logits(ids[j : j + 1], mask[j : j + 1], image_embeds=image_embeds)[0, 1].item()

    for i in range(sim.shape[0]):
        for j in sim[i].topk(k).indices.tolist():
            i2t[i, j] = itm(i, j) + sim[i, j]
    for j in range(sim.shape[1]):
        for i in sim[:, j].topk(k).indices.tolist():
            t2i[i, j] = itm(i, j) + sim[i, j]
    return sim, i2t, t2i


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_rerank_equals_the_naive_per_pair_reference(kind):
    model, (pixel_values, ids, mask), k = _model(kind), _data(), 4
    image_embeds, image_feats, text_feats = _features(model, pixel_values, ids, mask)
    out = rerank(
        model, image_embeds, image_feats, text_feats, ids, mask, k, text_image_ids=TXT2IMG, batch_size=3
    )
    sim, i2t, t2i = _naive(model, pixel_values, ids, mask, k)
    torch.testing.assert_close(out.sim, sim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.i2t, i2t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.t2i, t2i, atol=1e-5, rtol=1e-5)
    # exactly k re-ranked entries per image (row) and per text (column), -100 everywhere else
    assert ((out.i2t != NOT_RANKED).sum(dim=1) == k).all()
    assert ((out.t2i != NOT_RANKED).sum(dim=0) == k).all()
    assert out.i2t[out.i2t > NOT_RANKED].min() > NOT_RANKED + 50
    assert out.txt2img.tolist() == TXT2IMG.tolist()
    assert out.image_ids.tolist() == list(range(6)) and out.text_ids.tolist() == list(range(len(TXT2IMG)))


class _Counting:
    """A model wrapper counting the ViT and image key/value calls."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, {"forward_image": 0, "image_kv": 0}

    def __getattr__(self, name):
        if name in ("forward_image", "image_kv"):
            self.calls[name] += 1
        return getattr(self.model, name)


def test_each_image_keys_values_are_computed_once_for_all_its_candidates():
    model, (pixel_values, ids, mask) = _model("blip"), _data()
    image_embeds, image_feats, text_feats = _features(model, pixel_values, ids, mask)
    counting = _Counting(model)
    out = rerank(counting, image_embeds, image_feats, text_feats, ids, mask, k=5, batch_size=2)
    assert counting.calls == {"forward_image": 0, "image_kv": 6}
    # pairs in both top-k lists are scored once: the same value in both matrices
    both = (out.i2t != NOT_RANKED) & (out.t2i != NOT_RANKED)
    assert both.any() and torch.equal(out.i2t[both], out.t2i[both])
    # score_pairs in any order equals one ITM pass per pair
    images, texts = torch.tensor([3, 0, 3, 1]), torch.tensor([2, 7, 12, 0])
    logits = score_pairs(model, image_embeds, images, texts, ids, mask, batch_size=1)
    with torch.no_grad():
        kv = model.image_kv(image_embeds[images])
        expected = model.itm_logits(ids[texts], mask[texts], image_kv=kv)[:, 1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_recall_of_reranked_scores_on_a_hand_case():
    # 2 images, 4 texts (0, 1 of image 0; 2, 3 of image 1). Image-to-text uses i2t, text-to-image t2i.
    i2t = torch.tensor([[-100.0, 2.0, 3.0, -100.0], [1.0, -100.0, -100.0, 0.5]])
    t2i = torch.tensor([[1.0, 0.2, 0.9, -100.0], [0.0, 0.1, 0.8, 0.4]])
    txt2img = torch.tensor([0, 0, 1, 1])
    r = retrieval_recall(i2t, txt2img, ks=(1, 2), sim_t2i=t2i)
    # image 0: best own text (1) ranks 2nd; image 1: best own text (3) ranks 2nd
    assert (r["txt_r1"], r["txt_r2"]) == (0.0, 1.0)
    # text 0 -> image 0 first; text 1 -> image 0 first; text 2 -> image 0 (0.9) above image 1; text 3 -> image 1
    assert (r["img_r1"], r["img_r2"]) == (0.75, 1.0)
    assert r["r_mean"] == pytest.approx(((0.0 + 1.0) / 2 + (0.75 + 1.0) / 2) / 2)
    # without sim_t2i both directions read i2t: texts 0 and 2 have their image at -100
    assert retrieval_recall(i2t, txt2img, ks=(1, 2))["img_r1"] == 0.5


def _two_rank_worker(rank: int, world: int, path) -> None:
    torch.set_num_threads(1)
    data = torch.load(path / "inputs.pt")
    model = BlipModel(tiny_blip()).eval()
    model.load_state_dict(data["state"])
    # uneven shares; rank 1 repeats image 4 (and its texts), as a distributed sampler pads
    images = [torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4, 4])][rank]
    texts = torch.cat([torch.nonzero(TXT2IMG == i).flatten() for i in images])
    out = rerank(
        model,
        data["image_embeds"][images],
        data["image_feats"][images],
        data["text_feats"][texts],
        data["ids"][texts][:, : 7 + rank],  # different padded lengths per rank
        data["mask"][texts][:, : 7 + rank],
        k=3,
        image_ids=images,
        text_ids=texts,
        text_image_ids=TXT2IMG[texts],
        batch_size=2,
    )
    torch.save(out._asdict(), path / f"rank{rank}.pt")


def test_two_ranks_equal_one_rank(tmp_path):
    model, (pixel_values, ids, mask) = _model("blip"), _data()
    mask[:, 7:] = 0  # every text fits in 7 tokens, so each rank may cut its padding differently
    ids = ids * mask
    image_embeds, image_feats, text_feats = _features(model, pixel_values, ids, mask)
    one = rerank(
        model, image_embeds, image_feats, text_feats, ids, mask, k=3, text_image_ids=TXT2IMG, batch_size=2
    )
    torch.save(
        {
            "state": model.state_dict(),
            "image_embeds": image_embeds,
            "image_feats": image_feats,
            "text_feats": text_feats,
            "ids": ids,
            "mask": mask,
        },
        tmp_path / "inputs.pt",
    )
    run_distributed(_two_rank_worker, 2, tmp_path)
    for rank in range(2):
        two = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in one._asdict().items():
            torch.testing.assert_close(two[name], value, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_inference_batched_equals_one_by_one(kind):
    model = _model(kind)
    torch.manual_seed(2)
    pixel_values = torch.randn(3, 3, 32, 32)
    texts = ["a red square", "two small blue circles on a white table", "green"]
    sim = model.itc_similarity(pixel_values, texts)
    assert sim.shape == (3, 3)
    for i in range(3):
        for j, text in enumerate(texts):
            torch.testing.assert_close(sim[i, j], model.itc_similarity(pixel_values[i : i + 1], text)[0, 0])
    scores = model.itm_score(pixel_values, texts)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    for i, text in enumerate(texts):
        torch.testing.assert_close(scores[i], model.itm_score(pixel_values[i : i + 1], [text])[0])
    # one image against every text: its keys/values shared, same as the image repeated
    one = model.itm_score(pixel_values[:1], texts)
    torch.testing.assert_close(one, model.itm_score(pixel_values[:1].expand(3, -1, -1, -1), texts))
    # token ids give the same as strings; the probability is the softmax of the ITM logits
    ids, mask = model.tokenize(texts)
    torch.testing.assert_close(model.itm_score(pixel_values, input_ids=ids, attention_mask=mask), scores)
    with torch.no_grad():
        logits = model.itm_logits(ids, mask, image_embeds=model.forward_image(pixel_values))
    torch.testing.assert_close(scores, logits.softmax(dim=-1)[:, 1])
    with pytest.raises(ValueError, match="either texts or input_ids"):
        model.itm_score(pixel_values)
