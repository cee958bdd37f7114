"""CaptionFinetune: prompt-masked label-smoothed LM loss, initialisation from pretraining, caption
metrics over the whole validation set (shared with QFormerStage2), predict, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_blip, tiny_blip2
from fake_data import write_fake_caption_eval, write_fake_dataset

from lightning_blip.data import CaptionDataModule, ImageTextDataModule
from lightning_blip.metrics import CIDErScore, COCOBLEUScore, COCOROUGELScore
from lightning_blip.models.blip2 import Blip2LLMConfig
from lightning_blip.models.blip2.small_llm import save_tiny_llm
from lightning_blip.tasks import CaptionFinetune, MEDPretrain, QFormerStage2


def _files(tmp_path: Path) -> tuple[Path, Path]:
    train = write_fake_dataset(tmp_path / "images", num_images=8, corrupt=1)
    return train, write_fake_caption_eval(train, corrupt=1)


def _datamodule(train: Path, val: Path, **kw) -> CaptionDataModule:
    base = {"image_root": str(train.parent), "image_size": 32, "batch_size": 4, "num_workers": 0}
    return CaptionDataModule(
        str(train), val_annotations=str(val), test_annotations=str(val), **{**base, **kw}
    )


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    base = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return L.Trainer(**{**base, "enable_model_summary": False, "default_root_dir": tmp_path, **kw})


def test_loss_scores_the_caption_but_not_the_prompt_or_padding():
    module = CaptionFinetune(tiny_blip()).eval()
    captions = ["a red square", "a big blue square on a white background"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        loss = module.caption_loss(images, captions)
        # independently: tokens of "[DEC] a picture of <caption> [SEP]", targets shifted by one
        tok = module.tokenizer
        rows = [[tok.bos_token_id, *tok.encode("a picture of " + c)[1:]] for c in captions]
        length = max(map(len, rows))
        ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
        logits = module.model.lm_logits(ids, (ids != 0).long(), module.model.forward_image(images))
        targets = ids[:, 1:].clone()
        targets[:, :3] = -100  # "a picture of" is predicted but not scored
        targets[ids[:, 1:] == 0] = -100
        expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), label_smoothing=0.1)
    assert module.prompt_length == 4
    assert int((targets != -100).sum()) == 3 + 1 + 8 + 1  # caption words and [SEP] of each
    torch.testing.assert_close(loss, expected)


def test_initialises_from_a_pretraining_checkpoint_at_another_image_size(tmp_path):
    pretrain = MEDPretrain(tiny_blip(), queue_size=8)
    torch.save({"state_dict": pretrain.state_dict()}, tmp_path / "pretrain.ckpt")
    config = tiny_blip()
    config.vision.image_size = 48  # fine-tuning at a higher resolution: position embeddings resized
    module = CaptionFinetune(config, init_weights=str(tmp_path / "pretrain.ckpt"))
    source = pretrain.model.blip.state_dict()
    for key, value in module.model.state_dict().items():
        if key == "visual_encoder.vit.pos_embed":
            assert value.shape == (1, 1 + 36, 48) and source[key].shape == (1, 1 + 16, 48)
        else:
            torch.testing.assert_close(value, source[key], msg=key)
    unused = module.model.load_pretrained(str(tmp_path / "pretrain.ckpt")).ignored
    assert any(k.startswith("visual_encoder_m.") for k in unused) and "image_queue" in unused


def _expected(prediction: str, references: list[list[str]]) -> dict[str, float]:
    """The three scores of one caption for every image, computed directly."""
    out = {}
    for name, metric in {
        "cider": CIDErScore(),
        "bleu4": COCOBLEUScore(),
        "rouge_l": COCOROUGELScore(),
    }.items():
        metric.update([prediction] * len(references), references)
        value = metric.compute()
        out[f"val/{name}"] = float(value[-1] if value.ndim else value)  # BLEU: the 4-gram score
    return out


def test_validation_scores_every_readable_image_once_and_predict_returns_captions(tmp_path):
    train, val = _files(tmp_path)
    module = CaptionFinetune(tiny_blip())
    seen, caption = [], ["a red box"]

    def fake_generate(images):  # stands in for beam search: one known caption per image
        seen.append(len(images))
        return caption * len(images)

    module.generate_captions = fake_generate
    dm = _datamodule(train, val, eval_batch_size=3)
    references = [r["caption"] for r in json.loads(val.read_text()) if not r["image"].startswith("bad")]
    for prediction in ("a red box", "a blue square"):  # a second epoch starts from empty metrics
        caption[0] = prediction
        metrics = _trainer(tmp_path).validate(module, datamodule=dm)[0]
        assert metrics.pop("val/skipped_samples") == 1  # the unreadable validation image
        assert metrics == pytest.approx(_expected(prediction, references), rel=1e-6)
        assert metrics["val/cider"] > 0.1
    assert sum(seen) == 2 * len(references) == 16

    predictions = _trainer(tmp_path).predict(module, datamodule=dm)
    assert [i for p in predictions for i in p["image_id"]] == [f"{i}.png" for i in range(8)]
    assert all(c == "a blue square" for p in predictions for c in p["caption"])


def test_fit_validate_and_reload_from_checkpoint(tmp_path):
    train, val = _files(tmp_path)
    module = CaptionFinetune(tiny_blip(), generate_kwargs={"max_length": 8})
    assert module.generate_kwargs == {"num_beams": 3, "max_length": 8, "min_length": 5}
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=_datamodule(train, val))
    assert {"train/loss", "val/cider", "val/bleu4", "val/rouge_l"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "caption.ckpt")
    restored = CaptionFinetune.load_from_checkpoint(tmp_path / "caption.ckpt", weights_only=True).eval()
    module.eval()
    images = torch.randn(2, 3, 32, 32)
    assert restored.generate_captions(images) == module.generate_captions(images)
    expected = module.model.generate(images, module.tokenizer, num_beams=3, max_length=8, min_length=5)
    assert module.generate_captions(images) == expected


def test_skipped_training_samples_are_counted_and_survive_a_checkpoint(tmp_path, caplog):
    train = write_fake_dataset(tmp_path / "images", num_images=3, corrupt=1)  # 4 items, 1 unreadable
    dm = _datamodule(train, write_fake_caption_eval(train, corrupt=1))
    module = CaptionFinetune(tiny_blip(), generate_kwargs={"max_length": 6})
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)  # one batch of all 4 per epoch: the bad one every step
    assert module.skipped_samples == 3 and trainer.callback_metrics["data/skipped_samples"] == 3
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    restored = CaptionFinetune.load_from_checkpoint(tmp_path / "c.ckpt", weights_only=True)
    assert restored.skipped_samples == 3
    with caplog.at_level("WARNING", logger="lightning_blip.tasks.base"):
        module.generate_captions = lambda images: ["x"] * len(images)
        _trainer(tmp_path).predict(module, datamodule=dm)
    assert "skipped 1 unreadable samples" in caplog.text


def test_qformer_stage2_validates_with_caption_metrics_and_keeps_its_loss(tmp_path):
    stage1 = tiny_blip2()
    llm = save_tiny_llm("opt", tmp_path / "opt")
    config = Blip2LLMConfig(vision=stage1.vision, qformer=stage1.qformer, llm=str(llm), prompt="a photo of")
    module = QFormerStage2(config, generate_kwargs={"num_beams": 2, "max_new_tokens": 4})
    train, val = _files(tmp_path)
    metrics = _trainer(tmp_path).validate(module, datamodule=_datamodule(train, val))[0]
    assert {"val/cider", "val/bleu4", "val/rouge_l"} <= set(metrics) and "val/loss" not in metrics
    pairs = ImageTextDataModule(
        str(train), val_annotations=str(train), image_root=str(train.parent), image_size=32, num_workers=0
    )
    metrics = _trainer(tmp_path).validate(module, datamodule=pairs)[0]
    assert "val/loss" in metrics and "val/cider" not in metrics


def test_a_rank_that_captioned_nothing_still_scores_when_another_did(monkeypatch):
    """The caption metrics gather across ranks: every rank must score if any rank captioned."""
    from types import SimpleNamespace

    module = CaptionFinetune(tiny_blip())
    others = {"updated": 1.0}
    strategy = SimpleNamespace(reduce=lambda value, reduce_op: value + others["updated"])
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(strategy=strategy)))
    scored = []
    for name, metric in module.caption_metrics.items():
        monkeypatch.setattr(metric, "compute", lambda name=name: scored.append(name) or torch.tensor(0.5))
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: None)
    assert module.log_caption_metrics("val") == {"cider": 0.5, "bleu4": 0.5, "rouge_l": 0.5}
    others["updated"] = 0.0
    scored.clear()
    assert module.log_caption_metrics("val") == {} and not scored


def test_a_misspelled_generation_option_fails_when_the_module_is_built():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_beam'\]; BlipModel.generate takes"):
        CaptionFinetune(tiny_blip(), generate_kwargs={"num_beam": 3})
    assert CaptionFinetune(tiny_blip(), generate_kwargs={"num_beams": 2}).generate_kwargs["num_beams"] == 2
