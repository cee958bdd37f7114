"""VQAFinetune glue: a training step, VQA accuracy in validation, predictions, initialisation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_blip
from fake_vqa import write_fake_vqa

from lightning_blip.data import VQADataModule
from lightning_blip.models.blip import BlipModel
from lightning_blip.tasks import VQAFinetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def _datamodule(paths: dict[str, Path], **kw) -> VQADataModule:
    base = {
        "train_questions": str(paths["flat"]),
        "val_questions": str(paths["questions"]),
        "val_annotations": str(paths["annotations"]),
        "test_questions": str(paths["questions"]),
        "answer_list": str(paths["answer_list"]),
        "image_root": str(paths["image_root"]),
        "image_size": 32,
        "batch_size": 4,
        "num_workers": 0,
    }
    return VQADataModule(**{**base, **kw})


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    base = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**base, **kw})


def test_fast_dev_run_trains_and_ranks(tmp_path: Path):
    paths = write_fake_vqa(tmp_path / "vqa", num_images=4, corrupt=1)
    module = VQAFinetune(tiny_blip(), inference="rank", k_test=3)
    trainer = _trainer(tmp_path, fast_dev_run=1)
    trainer.fit(module, datamodule=_datamodule(paths))
    metrics = trainer.callback_metrics
    assert trainer.global_step == 1 and torch.isfinite(metrics["train/loss_vqa"])
    assert 0.0 <= metrics["val/vqa_acc"] <= 1.0 and "val/vqa_acc_yes_no" in metrics


def test_validation_accuracy_is_the_official_score_of_the_chosen_answers(tmp_path: Path):
    paths = write_fake_vqa(tmp_path / "vqa", num_images=4)
    # one candidate: "yes" is right for the 4 yes/no questions and wrong for the 4 colour ones
    module = VQAFinetune(tiny_blip(), inference="rank", answer_list=str(tmp_path / "yes.json"))
    (tmp_path / "yes.json").write_text('["yes"]')
    metrics = _trainer(tmp_path).validate(module, datamodule=_datamodule(paths), verbose=False)[0]
    assert metrics["val/vqa_acc"] == pytest.approx(0.5)
    assert metrics["val/vqa_acc_yes_no"] == pytest.approx(1.0)
    assert metrics["val/vqa_acc_other"] == pytest.approx(0.0)


def test_predict_generates_answers_per_question_id_from_pretrained_weights(tmp_path: Path):
    paths = write_fake_vqa(tmp_path / "vqa", num_images=2, corrupt=1)
    weights = tmp_path / "med.pt"
    blip = BlipModel(tiny_blip())
    torch.save(blip.state_dict(), weights)
    module = VQAFinetune(tiny_blip(), inference="generate", max_answer_length=4, init_weights=str(weights))
    assert torch.equal(
        module.model.question_encoder.layers[0].ffn.output.weight, blip.text.layers[0].ffn.output.weight
    )
    batches = _trainer(tmp_path).predict(module, datamodule=_datamodule(paths))
    ids = [i for b in batches for i in b["question_id"]]
    answers = [a for b in batches for a in b["answer"]]
    assert ids == [1000, 1001, 1010, 1011]  # the corrupt image's questions are skipped
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)


def test_a_rank_that_evaluated_nothing_still_computes_when_another_did(monkeypatch):
    """The metrics' compute is a collective: skipping it on an empty rank would hang the others."""
    from types import SimpleNamespace

    module = VQAFinetune(tiny_blip(), inference="rank", k_test=3)
    others = {"updated": 1.0}  # what the other ranks report
    strategy = SimpleNamespace(reduce=lambda value, reduce_op: value + others["updated"])
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(strategy=strategy)))
    computed, logged = [], []
    monkeypatch.setattr(
        module.val_accuracy, "compute", lambda: computed.append(1) or {"overall": torch.tensor(0.5)}
    )
    monkeypatch.setattr(module, "log", lambda key, value, **kw: logged.append(key))
    module.on_validation_epoch_end()
    assert computed and logged == ["val/vqa_acc"]
    others["updated"] = 0.0  # nothing evaluated anywhere: no rank computes
    computed.clear()
    module.on_validation_epoch_end()
    assert not computed


def test_a_question_without_a_known_type_keeps_its_batchmates_types(monkeypatch):
    module = VQAFinetune(tiny_blip(), inference="rank", k_test=3)
    monkeypatch.setattr(module, "predict_answers", lambda batch: ["yes", "2"])
    batch = {
        "image": torch.zeros(2, 3, 32, 32),
        "gt_answers": [["yes"] * 10, ["2"] * 10],
        "answer_type": ["yes/no", None],
        "index": torch.tensor([0, 1]),
    }
    module._evaluate(batch, module.val_accuracy)
    assert set(module.val_accuracy.compute()) == {"overall", "yes/no"}
