"""The CapFilt demo end to end, shortened: fine-tunes, CapFilt, removal scores and two pretrainings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_blip

from lightning_blip.demos.capfilt_demo import add_noise, main, separating_threshold
from lightning_blip.tasks import MEDPretrain

REPO = Path(__file__).resolve().parents[1]


def test_noise_replaces_the_given_fraction_by_other_captions():
    records = [{"image": f"{i}.png", "caption": "ab"[i % 2], "image_id": str(i)} for i in range(10)]
    noisy_records, noisy = add_noise(records, 0.3, seed=0)
    assert len(noisy) == 3
    for i, (before, after) in enumerate(zip(records, noisy_records)):
        assert (before["caption"] != after["caption"]) == (i in noisy)


def test_the_threshold_separates_most_pairs():
    assert separating_threshold([0.4, 0.5, 0.6], [0.05, 0.1, 0.45]) == pytest.approx(0.25)  # 5 of 6 right
    assert separating_threshold([0.9], [0.1]) == pytest.approx(0.5)
    assert separating_threshold([0.2, 0.3], [0.6, 0.7]) < 0.2  # nothing separates: keep everything


@pytest.mark.slow
def test_demo_reports_removal_and_retrieval(tmp_path: Path, capsys):
    pretrained = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": MEDPretrain(tiny_blip(), queue_size=32).state_dict()}, pretrained)
    result = main(
        ["--pretrained", str(pretrained), "--output-dir", str(tmp_path / "out"), "--recipes", str(REPO / "recipes"),
         "--human", "3500", "--pretrain-epochs", "1",
         "--capfilt-args=--image_size=32 --captioning.max_length=6 --trainer.enable_progress_bar=false",
         "-c", str(REPO / "tests" / "tiny_finetune.yaml"), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
         "--trainer.limit_val_batches=1", "--data.init_args.eval_batch_size=8"]
    )  # fmt: skip
    assert set(result["removal"]) == {"precision", "recall", "removed"}
    assert result["capfilt"]["sources"]["web"]["images_in"] == 78  # 3,578 train images - 3,500 human
    assert set(result["retrieval"]) == {"noisy", "bootstrapped"}
    assert 0.0 <= result["threshold"] <= 1.0  # calibrated on the held-out human images
    assert "precision" in capsys.readouterr().out
