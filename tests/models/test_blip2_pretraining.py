"""BLIP-2 stage 1: frozen encoder, the three losses, ITG cache reuse, and 1 rank = 2 ranks."""

from __future__ import annotations

import pytest
import torch
from conftest import text_batch, tiny_blip2
from dist_utils import run_distributed

from lightning_blip.losses.itc import max_query_similarity
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip2 import Blip2Model
from lightning_blip.models.blip2_pretraining import Blip2ForPretraining


def _batch(n: int = 4):
    ids, mask = text_batch(batch=n, length=7)
    return torch.randn(n, 3, 32, 32), ids, mask


def test_image_encoder_is_frozen_in_eval_mode_with_its_last_block_removed():
    model = Blip2Model(tiny_blip2()).train()
    encoder = model.image_encoder.visual_encoder
    assert len(encoder.vit.blocks) == 2 and not encoder.training and model.qformer.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert model.image_encoder.ln_vision.weight.requires_grad
    assert model.qformer.layers[0].cross_attn.attention.kv.key.in_features == encoder.width


def test_losses_train_the_qformer_and_never_the_frozen_encoder():
    model = Blip2ForPretraining(tiny_blip2()).train()
    out = model(*_batch(), negative_sampler=NegativeSampler("sample", "local"))
    (out.loss_itc + out.loss_itm + out.loss_lm).backward()
    assert all(p.grad is None for p in model.blip2.image_encoder.visual_encoder.parameters())
    no_grad = [n for n, p in model.blip2.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(x) for x in out[:3])


def test_itc_uses_the_max_over_queries():
    image = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])  # (2 images, 2 queries, E=2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    expected = torch.tensor([[1.0, 1.0, 0.8], [0.8, 0.8, 1.0]])
    torch.testing.assert_close(max_query_similarity(image, text), expected)


def test_itm_logits_are_the_query_average_of_the_head():
    model = Blip2Model(tiny_blip2()).eval()
    pixels, ids, mask = _batch()
    embeds = model.forward_image(pixels)
    hidden = model.qformer(ids, mask, image_embeds=embeds).last_hidden_state[:, :8]
    expected = model.itm_head(hidden).mean(dim=1)
    torch.testing.assert_close(model.itm_logits(ids, mask, image_embeds=embeds), expected)


def test_itg_on_cached_query_keys_values_equals_the_joint_pass():
    torch.manual_seed(0)
    cached = Blip2ForPretraining(tiny_blip2(), itg_cache=True).eval()
    joint = Blip2ForPretraining(tiny_blip2(), itg_cache=False).eval()
    joint.load_state_dict(cached.state_dict())
    batch = _batch()
    sampler = NegativeSampler("hardest", "local")
    a, b = cached(*batch, negative_sampler=sampler), joint(*batch, negative_sampler=sampler)
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(x, y)


def test_image_id_positives_are_never_itm_negatives():
    model = Blip2ForPretraining(tiny_blip2(), positives="image_id")
    pixels, ids, mask = _batch()
    with pytest.raises(ValueError, match="image_ids"):
        model(pixels, ids, mask)
    image_ids = torch.tensor([0, 0, 1, 1])
    for _ in range(5):
        out = model(pixels, ids, mask, image_ids, NegativeSampler("sample", "local"))
        assert (image_ids[out.neg_text_idx] != image_ids).all()
        assert (image_ids[out.neg_image_idx] != image_ids).all()
    # one image's captions only: the negatives are the other captions, never the pair itself
    for pool in ("local", "global"):
        out = model(pixels, ids, mask, torch.tensor([3, 3, 3, 3]), NegativeSampler("hardest", pool))
        assert (out.neg_text_idx != torch.arange(4)).all() and (out.neg_image_idx != torch.arange(4)).all()


def _step(model, batch, sampler):
    out = model(*batch, negative_sampler=sampler)
    (out.loss_itc + out.loss_itm + out.loss_lm).backward()
    grads = {n: p.grad.clone() for n, p in model.blip2.named_parameters() if p.grad is not None}
    return torch.stack([out.loss_itc, out.loss_itm, out.loss_lm]).detach(), grads


def _two_rank_worker(rank, world, path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Blip2ForPretraining(tiny_blip2())
    torch.manual_seed(1)
    batch = _batch(8)
    half = [t[rank * 4 : (rank + 1) * 4] for t in batch]
    ddp = DistributedDataParallel(model)  # averages the gradients over ranks
    out = ddp(*half, negative_sampler=NegativeSampler("hardest", "global"))
    (out.loss_itc + out.loss_itm + out.loss_lm).backward()
    grads = {n: p.grad.clone() for n, p in model.blip2.named_parameters() if p.grad is not None}
    losses = torch.stack([out.loss_itc, out.loss_itm, out.loss_lm]).detach()
    dist.all_reduce(losses)
    if rank == 0:
        torch.save({"losses": losses / world, "grads": grads}, path)


def test_two_ranks_equal_one_rank_with_the_same_global_batch(tmp_path):
    torch.manual_seed(0)
    model = Blip2ForPretraining(tiny_blip2())
    torch.manual_seed(1)
    losses, grads = _step(model, _batch(8), NegativeSampler("hardest", "global"))
    run_distributed(_two_rank_worker, 2, tmp_path / "r.pt")
    two = torch.load(tmp_path / "r.pt")
    torch.testing.assert_close(two["losses"], losses, atol=1e-5, rtol=1e-5)
    assert set(two["grads"]) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
