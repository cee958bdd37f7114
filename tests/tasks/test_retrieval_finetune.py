"""Retrieval fine-tuning: ITC + ITM without LM, online hard-negative mining, re-ranked validation."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import text_batch, tiny_blip, tiny_blip2
from fake_data import COLOURS, write_fake_dataset

from lightning_blip.callbacks import HardNegativeMining, MomentumEncoder
from lightning_blip.data import RetrievalDataModule
from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.metrics.retrieval import retrieval_recall
from lightning_blip.models.blip import BlipForPretraining
from lightning_blip.models.shared.retrieval import rerank
from lightning_blip.tasks import QFormerRetrievalFinetune, RetrievalFinetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def _batch():
    ids, mask = text_batch(batch=4, length=7)
    return torch.randn(4, 3, 32, 32), ids, mask


def test_without_lm_the_losses_equal_pretraining_itc_and_itm():
    batch, image_ids = _batch(), torch.tensor([0, 0, 1, 2])
    outputs, models = [], []
    for lm_loss in (True, False):
        torch.manual_seed(1)
        model = BlipForPretraining(
            tiny_blip(dropout=0.1), queue_size=8, positives="image_id", lm_loss=lm_loss
        )
        torch.manual_seed(2)  # same dropout masks and sampled negatives
        outputs.append(model(*batch, image_ids=image_ids, alpha=0.4, negative_sampler=NegativeSampler()))
        models.append(model)
    full, no_lm = outputs
    torch.testing.assert_close(no_lm.loss_itc, full.loss_itc, rtol=0, atol=0)
    torch.testing.assert_close(no_lm.loss_itm, full.loss_itm, rtol=0, atol=0)
    assert torch.equal(no_lm.neg_text_idx, full.neg_text_idx) and no_lm.loss_lm.item() == 0.0
    assert full.loss_lm.item() > 0

    # the decoder-only weights are fixed (DDP needs every trainable parameter used); the rest learns
    model = models[1]
    (no_lm.loss_itc + no_lm.loss_itm).backward()
    fixed = {n for n, p in model.blip.named_parameters() if not p.requires_grad}
    assert fixed and all(
        "decoder_self_attn" in n
        or n.startswith(("lm_head.dense", "lm_head.norm"))
        or n == "lm_head.decoder.bias"
        for n in fixed
    )
    assert model.blip.text.embeddings.word_embeddings.weight.requires_grad  # tied to the LM head
    assert [n for n, p in model.blip.named_parameters() if p.requires_grad and p.grad is None] == []


def test_online_mining_ranks_negatives_by_online_similarities():
    torch.manual_seed(1)
    model = BlipForPretraining(tiny_blip(), queue_size=8, positives="image_id", mining_features="online")
    with torch.no_grad():  # momentum copies that differ from the online model
        model.text_proj_m.weight.add_(torch.randn_like(model.text_proj_m.weight))
    batch, image_ids = _batch(), torch.tensor([0, 0, 1, 2])
    out = model(*batch, image_ids=image_ids, alpha=0.4, negative_sampler=NegativeSampler("hardest"))
    with torch.no_grad():
        sim = model.blip.encode_image(batch[0]) @ model.blip.encode_text(*batch[1:]).t()
    sim = sim.masked_fill(image_ids[:, None] == image_ids[None, :], -torch.inf)
    assert out.neg_text_idx.tolist() == sim.argmax(dim=1).tolist()
    assert out.neg_image_idx.tolist() == sim.t().argmax(dim=1).tolist()


def _retrieval_data(tmp_path) -> RetrievalDataModule:
    train = write_fake_dataset(tmp_path / "images", num_images=8)
    names = list(COLOURS)
    records = [
        {"image": f"{i}.png", "caption": [f"a {names[i % 4]} square", f"number {i}"][: 1 + i % 2]}
        for i in range(8)
    ]
    records.insert(2, {"image": "missing.png", "caption": ["no such file"]})
    test = tmp_path / "images" / "test.json"
    test.write_text(json.dumps(records))
    return RetrievalDataModule(
        train_annotations=str(train),
        val_annotations=str(test),
        test_annotations=str(test),
        image_root=str(train.parent),
        image_size=32,
        batch_size=4,
        eval_batch_size=3,
        num_workers=0,
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    base = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**base, **kw})


def test_fast_dev_run_trains_itc_itm_and_validates_by_reranking(tmp_path):
    module, datamodule = RetrievalFinetune(tiny_blip(), queue_size=8, k_test=3), _retrieval_data(tmp_path)
    trainer = _trainer(tmp_path, fast_dev_run=1)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert {"train/loss_itc", "train/loss_itm", "val/r_mean", "val/txt_r1", "val/img_r10"} <= set(metrics)
    assert "train/loss_lm" not in metrics
    mining = next(c for c in trainer.callbacks if isinstance(c, HardNegativeMining))
    assert (mining.sampler.pool, mining.sampler.epsilon) == ("global", 0.0)
    assert any(isinstance(c, MomentumEncoder) for c in trainer.callbacks)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    restored = RetrievalFinetune.load_from_checkpoint(tmp_path / "ft.ckpt", weights_only=True)
    assert (restored.k_test, restored.model.lm_loss, restored.model.positives) == (3, False, "image_id")

    # the whole test split: the logged numbers are those of the pure functions on the same features
    (logged,) = _trainer(tmp_path).test(module, datamodule=datamodule)
    batches = list(datamodule.test_dataloader())
    blip = module.model.blip.eval()
    cat = torch.cat
    with torch.no_grad():  # encoded batch by batch, as in the steps (near-ties in an untrained model)
        image_embeds = [blip.forward_image(b["image"]) for b in batches]
        image_feats = [blip.encode_image_embeds(e) for e in image_embeds]
        text_feats = [blip.encode_text(b["input_ids"], b["attention_mask"]) for b in batches]
        length = max(b["input_ids"].shape[1] for b in batches)
        ids = cat(
            [torch.nn.functional.pad(b["input_ids"], (0, length - b["input_ids"].shape[1])) for b in batches]
        )
        mask = (ids != 0).long()
        scores = rerank(
            blip,
            cat(image_embeds),
            cat(image_feats),
            cat(text_feats),
            ids,
            mask,
            k=3,
            image_ids=cat([b["index"] for b in batches]),
            text_ids=cat([b["text_index"] for b in batches]),
            text_image_ids=cat([b["text_image_index"] for b in batches]),
        )
    assert scores.image_ids.tolist() == [0, 1, 3, 4, 5, 6, 7, 8]  # the unreadable image 2 is left out
    expected = retrieval_recall(scores.i2t, scores.txt2img, sim_t2i=scores.t2i)
    for key, value in expected.items():
        assert logged[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
    assert logged["test/itc_r_mean"] == pytest.approx(retrieval_recall(scores.sim, scores.txt2img)["r_mean"])


def test_blip2_retrieval_finetune_trains_and_validates_by_reranking(tmp_path):
    module = QFormerRetrievalFinetune(tiny_blip2(), k_test=2)
    trainer = _trainer(tmp_path, fast_dev_run=1)
    trainer.fit(module, datamodule=_retrieval_data(tmp_path))
    metrics = trainer.callback_metrics
    assert {"train/loss_itc", "train/loss_itm", "train/loss_itg", "val/r_mean", "val/img_r1"} <= set(metrics)
    assert 0.0 <= metrics["val/r_mean"] <= 1.0


def test_init_weights_from_a_pretraining_checkpoint_fills_the_model_and_its_momentum_copies(tmp_path):
    from lightning_blip.tasks import MEDPretrain

    source = MEDPretrain(tiny_blip(), queue_size=8)
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)  # the layout of a Lightning checkpoint
    module = RetrievalFinetune(tiny_blip(), queue_size=8, init_weights=str(path))
    for name, value in source.model.blip.state_dict().items():
        assert torch.equal(module.model.blip.state_dict()[name], value), name
    for online, momentum in module.model.momentum_pairs():
        assert torch.equal(online, momentum)
