"""BLIP pretraining objective: gradients, momentum encoders, queues, and 1 rank = 2 ranks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import text_batch, tiny_blip
from dist_utils import run_distributed

from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip import BlipForPretraining


def _batch(n: int = 4):
    ids, mask = text_batch(batch=n, length=7)
    return torch.randn(n, 3, 32, 32), ids, mask


def test_every_online_parameter_learns_and_momentum_copies_do_not():
    model = BlipForPretraining(tiny_blip(), queue_size=8)
    out = model(*_batch(), alpha=0.4)
    (out.loss_itc + out.loss_itm + out.loss_lm).backward()
    missing = [n for n, p in model.blip.named_parameters() if p.grad is None]
    assert missing == []
    assert all(
        p.grad is None and not p.requires_grad
        for m in model.momentum_modules().values()
        for p in m.parameters()
    )


def test_momentum_copies_start_equal_and_follow_the_ema():
    model = BlipForPretraining(tiny_blip(), queue_size=8)
    for online, momentum in model.momentum_pairs():
        assert torch.equal(online, momentum)
    online, momentum = model.momentum_pairs()[0]
    before = momentum.clone()
    with torch.no_grad():
        online.add_(1.0)
    model.momentum_update(0.995)
    torch.testing.assert_close(momentum, 0.995 * before + 0.005 * online)
    names = {n for n, _ in model.text_m.named_parameters()}
    assert not any("cross_attn" in n or "decoder_self_attn" in n for n in names)


def test_queue_is_filled_in_order_and_wraps():
    model = BlipForPretraining(tiny_blip(), queue_size=6)
    batch = _batch()
    model(*batch, alpha=0.0)
    assert model.queue_ptr.item() == 4
    first = model.text_queue[:, :4].clone()
    model(*batch, alpha=0.0)
    assert model.queue_ptr.item() == 2
    torch.testing.assert_close(model.text_queue[:, 4:6], first[:, :2])  # same momentum features again
    torch.testing.assert_close(model.text_queue[:, :2], first[:, 2:4])


def test_temperature_is_clamped():
    model = BlipForPretraining(tiny_blip(), queue_size=8)
    with torch.no_grad():
        model.blip.temp.fill_(2.0)
    assert model(*_batch(), alpha=0.0).temp.item() == pytest.approx(0.5)
    model.clamp_temperature_()
    assert model.blip.temp.item() == pytest.approx(0.5)


def test_image_id_positives_need_ids_and_change_the_loss():
    batch = _batch()
    torch.manual_seed(1)
    pair = BlipForPretraining(tiny_blip(), queue_size=8)
    torch.manual_seed(1)
    by_id = BlipForPretraining(tiny_blip(), queue_size=8, positives="image_id")
    with pytest.raises(ValueError, match="image_ids"):
        by_id(*batch)
    ids = torch.tensor([0, 0, 1, 2])
    sampler = NegativeSampler("hardest")
    a = pair(*batch, alpha=0.0, negative_sampler=sampler)
    b = by_id(*batch, image_ids=ids, alpha=0.0, negative_sampler=sampler)
    assert not torch.allclose(a.loss_itc, b.loss_itc)
    assert b.neg_text_idx[0].item() not in (0, 1) and b.neg_text_idx[1].item() not in (0, 1)
    assert by_id.id_queue[:4].tolist() == [0, 0, 1, 2]
    # a batch of one image's captions: the negatives are the other captions, never the pair itself
    same = by_id(*batch, image_ids=torch.tensor([7, 7, 7, 7]), alpha=0.0, negative_sampler=sampler)
    for negatives in (same.neg_text_idx, same.neg_image_idx):
        assert (negatives != torch.arange(4)).all()


def test_distillation_targets_come_from_the_momentum_encoders():
    """BLIP's ITC with momentum distillation, written out from the raw encoder outputs: the soft
    targets are ``alpha * softmax(momentum feature @ momentum keys / temp) + (1 - alpha) * hard``.
    The momentum copies are moved away from the online weights, so online-fed targets differ."""
    model = BlipForPretraining(tiny_blip(), queue_size=8).eval()
    with torch.no_grad():
        for _, momentum in model.momentum_pairs():
            momentum.add_(0.05 * torch.randn_like(momentum))
    pixels, ids, mask = _batch()
    alpha, blip = 0.4, model.blip
    image_queue, text_queue = model.image_queue.t().clone(), model.text_queue.t().clone()
    out = model(pixels, ids, mask, alpha=alpha, negative_sampler=NegativeSampler("hardest", "local"))

    @torch.no_grad()
    def features(vision, vision_proj, text, text_proj):  # normalised projected [CLS] of image and text
        image_cls = vision(pixels)[:, 0]
        text_cls = text(ids, mask, mode="text").last_hidden_state[:, 0]
        return F.normalize(vision_proj(image_cls), dim=-1), F.normalize(text_proj(text_cls), dim=-1)

    image, text = features(blip.visual_encoder, blip.vision_proj, blip.text, blip.text_proj)
    image_m, text_m = features(model.visual_encoder_m, model.vision_proj_m, model.text_m, model.text_proj_m)
    image_keys, text_keys = torch.cat([image_m, image_queue]), torch.cat([text_m, text_queue])
    temp, hard = blip.temp.detach(), torch.eye(4, 12)

    def itc(teacher_image, teacher_text):
        soft_i2t = alpha * (teacher_image @ text_keys.t() / temp).softmax(1) + (1 - alpha) * hard
        soft_t2i = alpha * (teacher_text @ image_keys.t() / temp).softmax(1) + (1 - alpha) * hard
        i2t = -(soft_i2t * (image @ text_keys.t() / temp).log_softmax(1)).sum(1).mean()
        t2i = -(soft_t2i * (text @ image_keys.t() / temp).log_softmax(1)).sum(1).mean()
        return (i2t + t2i) / 2

    torch.testing.assert_close(out.loss_itc, itc(image_m, text_m))
    assert (out.loss_itc - itc(image, text)).abs() > 1e-3  # the test tells the two teachers apart


def _step(model, batch, sampler):
    out = model(*batch, alpha=0.4, negative_sampler=sampler)
    (out.loss_itc + out.loss_itm + out.loss_lm).backward()
    grads = {n: p.grad.clone() for n, p in model.blip.named_parameters()}
    losses = torch.stack([out.loss_itc, out.loss_itm, out.loss_lm]).detach()
    return losses, grads


def _two_rank_worker(rank, world, path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    results = {}
    for gather_keys in (True, False):
        torch.manual_seed(0)
        model = BlipForPretraining(tiny_blip(), queue_size=16, gather_keys=gather_keys)
        torch.manual_seed(1)
        batch = _batch(8)
        half = [t[rank * 4 : (rank + 1) * 4] for t in batch]
        ddp = DistributedDataParallel(model)  # averages the gradients over ranks
        out = ddp(*half, alpha=0.4, negative_sampler=NegativeSampler("hardest", "global"))
        (out.loss_itc + out.loss_itm + out.loss_lm).backward()
        grads = {n: p.grad.clone() for n, p in model.blip.named_parameters()}
        losses = torch.stack([out.loss_itc, out.loss_itm, out.loss_lm]).detach()
        dist.all_reduce(losses)
        results[gather_keys] = {
            "losses": losses / world,
            "grads": grads,
            "text_queue": model.text_queue,
            "image_queue": model.image_queue,
            "ptr": model.queue_ptr,
        }
    if rank == 0:
        torch.save(results, path)


def test_two_ranks_equal_one_rank_with_the_same_global_batch(tmp_path):
    torch.manual_seed(0)
    model = BlipForPretraining(tiny_blip(), queue_size=16)
    torch.manual_seed(1)
    losses, grads = _step(model, _batch(8), NegativeSampler("hardest", "global"))
    run_distributed(_two_rank_worker, 2, tmp_path / "r.pt")
    results = torch.load(tmp_path / "r.pt")
    two = results[True]
    torch.testing.assert_close(two["losses"], losses, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(two["text_queue"], model.text_queue)
    torch.testing.assert_close(two["image_queue"], model.image_queue)
    assert two["ptr"] == model.queue_ptr
    # gather_keys=False (salesforce/BLIP's local keys): ITC sees fewer negatives, the queue is still global
    local = results[False]
    assert not torch.allclose(local["losses"][0], losses[0])
    torch.testing.assert_close(local["text_queue"], model.text_queue)


def test_bf16_autocast_losses_stay_close_to_fp32():
    model = BlipForPretraining(tiny_blip(), queue_size=8)
    batch = _batch()
    sampler = NegativeSampler("hardest")
    state = model.state_dict()
    fp32 = model(*batch, alpha=0.4, negative_sampler=sampler)
    model.load_state_dict(state)  # same queues
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(*batch, alpha=0.4, negative_sampler=sampler)
    for a, b in zip(fp32[:3], bf16[:3]):
        assert b.dtype == torch.float32  # losses are computed in fp32
        torch.testing.assert_close(b, a, rtol=3e-2, atol=3e-2)
