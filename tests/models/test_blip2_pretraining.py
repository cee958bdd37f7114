"""BLIP-2 stage 1: frozen encoder, the three losses, ITG cache reuse, and 1 rank = 2 ranks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import text_batch, tiny_blip2
from dist_utils import run_distributed

from lightning_blip.losses.itc import max_query_similarity
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip2 import Blip2ForPretraining, Blip2Model


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


@pytest.mark.parametrize("pool", ["local", "global"])
def test_losses_equal_lavis_stage1_written_out_from_the_submodules(pool):
    """LAVIS ``Blip2Qformer.forward`` on one rank, from the raw outputs of the Q-Former and heads:
    ITC = max over queries, cross entropy with label smoothing 0.1 both ways; ITM on (pos, pos, neg)
    texts x (pos, neg, pos) images, labels (1, 0, 0), negatives the highest softmax(sim) + 1e-4 off
    the diagonal (``hardest``); ITG = [DEC] in place of [CLS], one pass over [queries; text] under
    the multimodal-causal mask, next-token cross entropy with label smoothing 0.1 over non-padding."""
    model = Blip2ForPretraining(tiny_blip2()).eval()
    pixels, ids, mask = _batch()
    out = model(pixels, ids, mask, negative_sampler=NegativeSampler("hardest", pool))

    blip2, B, Q = model.blip2, 4, 8
    with torch.no_grad():
        image_embeds = blip2.forward_image(pixels)
        image_feats = F.normalize(blip2.vision_proj(blip2.qformer(image_embeds=image_embeds)[0]), dim=-1)
        text_cls = blip2.qformer(ids, mask, queries=False)[0][:, 0]
        text_feat = F.normalize(blip2.text_proj(text_cls), dim=-1)
        sim_i2t = (image_feats @ text_feat.t()).amax(dim=1) / blip2.temp  # (I, Q, T) -> best query (I, T)
        sim_t2i = sim_i2t.t()
        arange = torch.arange(B)
        loss_itc = (
            F.cross_entropy(sim_i2t, arange, label_smoothing=0.1)
            + F.cross_entropy(sim_t2i, arange, label_smoothing=0.1)
        ) / 2

        neg_text = (sim_i2t.softmax(1) + 1e-4).fill_diagonal_(0).argmax(1)
        neg_image = (sim_t2i.softmax(1) + 1e-4).fill_diagonal_(0).argmax(1)
        itm_ids = torch.cat([ids, ids, ids[neg_text]])
        itm_mask = torch.cat([mask, mask, mask[neg_text]])
        itm_images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
        itm_hidden = blip2.qformer(itm_ids, itm_mask, image_embeds=itm_images)[0][:, :Q]
        itm_labels = torch.tensor([1] * B + [0] * 2 * B)
        loss_itm = F.cross_entropy(blip2.itm_head(itm_hidden).mean(dim=1), itm_labels)

        assert blip2.config.bos_token_id == 30522  # [DEC]: appended to bert-base-uncased's 30522 tokens
        dec_ids = torch.cat([torch.full((B, 1), 30522), ids[:, 1:]], dim=1)
        text_hidden = blip2.qformer(dec_ids, mask, image_embeds=image_embeds, causal=True)[0][:, Q:]
        logits = blip2.lm_head(text_hidden[:, :-1])
        targets = dec_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss_lm = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=0.1)

    assert torch.equal(out.neg_text_idx, neg_text) and torch.equal(out.neg_image_idx, neg_image)
    torch.testing.assert_close(torch.stack(out[:3]), torch.stack([loss_itc, loss_itm, loss_lm]))


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
