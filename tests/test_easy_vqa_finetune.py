"""The easy-VQA fine-tuning command end to end, shortened: three tasks from a pretraining checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_blip

from lightning_blip.demos.easy_vqa_finetune import main, newest_checkpoint, write_distinct_captions
from lightning_blip.tasks import MEDPretrain

REPO = Path(__file__).resolve().parents[1]


def test_distinct_captions_keep_the_first_image_of_each(tmp_path: Path):
    records = [{"image": f"{i}.png", "caption": c, "image_id": str(i)} for i, c in enumerate("aabca")]
    source = tmp_path / "test.json"
    source.write_text(json.dumps(records))
    assert write_distinct_captions(source, tmp_path / "distinct.json") == 3
    kept = json.loads((tmp_path / "distinct.json").read_text())
    assert [r["image"] for r in kept] == ["0.png", "2.png", "3.png"]


def test_without_a_pretrained_checkpoint_it_says_to_run_the_quickstart(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert newest_checkpoint(tmp_path / "outputs" / "quickstart") is None
    with pytest.raises(SystemExit):
        main([])
    assert "lightning_blip quickstart" in capsys.readouterr().err


def test_three_tasks_report_before_and_after(tmp_path: Path, capsys):
    pretrained = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": MEDPretrain(tiny_blip(), queue_size=32).state_dict()}, pretrained)
    results = main(
        ["--pretrained", str(pretrained), "--output-dir", str(tmp_path / "out"), "--recipes", str(REPO / "recipes"),
         "-c", str(REPO / "tests" / "tiny_finetune.yaml"), "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1",
         "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--data.init_args.eval_batch_size=8"]
    )  # fmt: skip
    for task, metric in (("caption", "val/cider"), ("vqa", "val/vqa_acc"), ("retrieval", "val/txt_r1")):
        for when in ("before", "after"):
            assert 0.0 <= results[task][when][metric] <= 10.0, (task, when)
    assert results["vqa"]["evaluated"] == 8 and 0.0 < results["baselines"]["val/vqa_acc"] < 1.0
    assert results["baselines"]["val/txt_r1"] == pytest.approx(1 / 48)  # size x colour x shape captions
    out = capsys.readouterr().out
    assert "majority answer" in out and "cider" in out
