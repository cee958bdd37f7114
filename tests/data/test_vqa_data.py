"""VQA data: both file layouts, BLIP's answer weights, skipped records and images, batches, easy-VQA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from fake_vqa import write_fake_vqa

from lightning_blip.data.text import pre_question
from lightning_blip.data.transforms import eval_transform
from lightning_blip.data.vqa import (
    EasyVQADataModule,
    VQACollator,
    VQADataModule,
    VQADataset,
    answer_weights,
    load_answer_list,
    load_vqa,
)
from lightning_blip.models.shared.tokenizer import build_tokenizer


def test_answer_weights_are_annotator_shares_and_vg_is_fixed():
    answers, weights = answer_weights(["red", "red", "pink", "red", "orange"])
    assert answers == ["red", "pink", "orange"]
    assert weights == pytest.approx([3 / 5, 1 / 5, 1 / 5])
    assert answer_weights(["two"], "vg") == (["two"], [0.2])


def test_pre_question_deletes_blip_punctuation_and_keeps_question_marks():
    assert pre_question("What's (this) thing: A.B?  ") == "what's this thing ab?"
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


def test_vqav2_layout_joins_answers_and_skips_bad_records(tmp_path: Path, caplog):
    paths = write_fake_vqa(tmp_path, num_images=3, corrupt=1)
    data = json.loads(paths["questions"].read_text())
    data["questions"].insert(1, {"question_id": 5, "question": "no image id?"})
    data["questions"].append({"question_id": 6, "image_id": 100, "question": "unanswered?"})
    paths["questions"].write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        records, skipped = load_vqa(paths["questions"], paths["annotations"], require_answers=True)
    assert skipped == 2 and len(records) == 8
    assert "image_id" in caplog.text and "without answers" in caplog.text
    first = records[0]
    assert first.image == "train2014/COCO_train2014_000000000100.jpg"
    assert first.question_id == 1000 and first.answer_type == "other"
    assert first.answers == ("red",) * 7 + ("orange",) * 2 + ("pink",)
    # test splits keep questions without answers
    records, skipped = load_vqa(paths["questions"], None)
    assert skipped == 1 and len(records) == 9 and all(not r.answers for r in records)
    with pytest.raises(ValueError, match="image_template '{split}/{imageid}.jpg' must use only"):
        load_vqa(paths["questions"], None, image_template="{split}/{imageid}.jpg")
    del data["data_subtype"]
    paths["questions"].write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no 'data_subtype'"):  # else the paths would be "/COCO__..."
        load_vqa(paths["questions"], None)
    assert load_vqa(paths["questions"], None, image_template="{image_id}.jpg")[0][0].image == "100.jpg"


def test_flat_layout_skips_a_bad_line_and_matches_the_vqav2_layout(tmp_path: Path):
    paths = write_fake_vqa(tmp_path, num_images=3)
    flat, skipped = load_vqa(paths["flat"], require_answers=True)
    assert skipped == 1  # the line that is not JSON
    vqav2, _ = load_vqa(paths["questions"], paths["annotations"])
    key = [(r.question_id, r.image, r.question, r.answers) for r in vqav2]
    assert [(r.question_id, r.image, r.question, r.answers) for r in flat] == key


def test_dataset_skips_a_corrupt_image_and_collates_weighted_answers(tmp_path: Path, caplog):
    paths = write_fake_vqa(tmp_path, num_images=2, corrupt=1)
    records, _ = load_vqa(paths["questions"], paths["annotations"], require_answers=True)
    tokenizer = build_tokenizer()
    collate = VQACollator(tokenizer)
    evaluation = VQADataset(records, paths["image_root"], eval_transform(32))
    with caplog.at_level(logging.WARNING):
        assert evaluation[4] is None  # image 102 is not a JPEG
    assert "skipping image" in caplog.text and evaluation.num_skipped == 1
    batch = collate([evaluation[i] for i in (0, 1, 4)])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["num_skipped"] == 1
    assert batch["n_answers"].tolist() == [3, 1]
    assert batch["weights"].tolist() == pytest.approx([0.7, 0.2, 0.1, 1.0])
    decoded = tokenizer.batch_decode(batch["answer_ids"], skip_special_tokens=True)
    assert decoded == ["red", "orange", "pink", "yes"]
    assert (batch["answer_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert batch["question_ids"][0, 0] == tokenizer.cls_token_id
    assert tokenizer.decode(batch["question_ids"][0], skip_special_tokens=True) == "what color is the square?"
    assert batch["gt_answers"][1] == ["yes"] * 10 and batch["answer_type"] == ["other", "yes/no"]
    assert batch["question_id"] == [1000, 1001] and batch["index"].tolist() == [0, 1]

    training = VQADataset(records, paths["image_root"], eval_transform(32), substitute_corrupt=True)
    corrupt = [i for i in range(len(training)) if evaluation[i] is None]
    item = training[4]  # a random readable question takes the corrupt image's place
    assert item["index"] not in corrupt and item["num_skipped"] == 1


def test_datamodule_batches_and_answer_list(tmp_path: Path):
    paths = write_fake_vqa(tmp_path, num_images=4, corrupt=1)
    dm = VQADataModule(
        train_questions=[str(paths["flat"])],
        val_questions=str(paths["questions"]),
        val_annotations=str(paths["annotations"]),
        answer_list=str(paths["answer_list"]),
        image_root=str(paths["image_root"]),
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    dm.setup("fit")
    assert dm.num_skipped_records == {"train": 1, "val": 0}
    assert dm.answer_list == load_answer_list(paths["answer_list"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["answer_ids"].shape[0] == batch["n_answers"].sum() == batch["weights"].shape[0]
    assert len(dm.train_dataloader()) == 2  # 10 questions, drop_last
    val = list(dm.val_dataloader())
    assert sum(len(b["question_id"]) for b in val) == 8  # the corrupt image's 2 questions are dropped
    assert sum(b["num_skipped"] for b in val) == 2
    (tmp_path / "none.jsonl").write_text('{"question": "no image?"}\n')
    empty = VQADataModule(train_questions=[str(tmp_path / "none.jsonl")], image_root=str(tmp_path))
    with pytest.raises(ValueError, match="train_questions .*none.jsonl.*no valid question"):
        empty.setup("fit")


def test_easy_vqa_in_the_vqav2_layout(tmp_path: Path):
    dm = EasyVQADataModule(output_dir=str(tmp_path / "easy"), image_size=32, eval_batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("validate")
    shapes, colours = ["circle", "rectangle", "triangle"], ["black", "blue", "brown", "gray", "green"]
    colours += ["red", "teal", "yellow"]
    assert sorted(dm.answer_list) == sorted([*shapes, *colours, "yes", "no"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["num_skipped"] == 0
    assert all(len(set(a)) == 1 and len(a) == 10 and a[0] in dm.answer_list for a in batch["gt_answers"])
    assert set(batch["answer_type"]) <= {"yes/no", "other"}
    assert torch.equal(batch["weights"], torch.ones(8))
