"""`lightning_blip predict` on inputs without references: records without captions or answers, a folder
of images, retrieval with images only or texts only; where the files go and that none is overwritten."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fake_data import write_fake_dataset
from fake_vqa import write_fake_vqa
from PIL import Image
from safetensors.torch import load_file

from lightning_blip.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = {"caption_coco": "tiny_finetune.yaml", "vqa_v2": "tiny_finetune.yaml", "retrieval_coco": "tiny.yaml"}


def _predict(recipe: str, run_dir: Path, capsys, *args: str) -> list[Path]:
    """Run the recipe's predict with the tiny model; the absolute paths it printed as written."""
    capsys.readouterr()
    main(
        [
            "predict",
            "-c",
            str(REPO / "recipes" / f"{recipe}.yaml"),
            "-c",
            str(REPO / "tests" / TINY[recipe]),
            f"--trainer.default_root_dir={run_dir}",
            *args,
        ]
    )
    return [
        Path(p) for p in re.findall(r"^predictions written to (.+)$", capsys.readouterr().out, re.MULTILINE)
    ]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_caption_records_without_captions_under_the_run_folder(tmp_path: Path, capsys):
    images = write_fake_dataset(tmp_path / "images", num_images=3, corrupt=1).parent
    records = [{"image": "2.png", "image_id": 7}, {"image": "bad0.png"}, {"image": "0.png"}]
    annotations = _write_jsonl(tmp_path / "to_caption.jsonl", records)
    run = tmp_path / "run"
    written = _predict(
        "caption_coco",
        run,
        capsys,
        f"--data.init_args.predict_annotations=[{annotations}]",
        f"--data.init_args.image_root={images}",
    )
    # the logger's version folder of this run (its log_dir), not the working directory
    assert written == [run / "lightning_logs" / "version_0" / "predictions" / "predictions.jsonl"]
    rows = _rows(written[0])
    assert [r["image_id"] for r in rows] == ["7", "0.png"]  # the unreadable image skipped
    assert all(isinstance(r["caption"], str) for r in rows)


def test_caption_a_folder_of_images_with_ids_relative_to_it(tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    for name in ("z.png", "b/a.JPG", "a.png"):
        Image.new("RGB", (20, 20), (200, 10, 10)).save(
            folder / name, format="PNG" if "png" in name else "JPEG"
        )
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    written = _predict(
        "caption_coco",
        tmp_path / "run",
        capsys,
        f"--data.init_args.predict_images={folder}",
        "--trainer.logger=false",
    )
    assert written == [
        tmp_path / "run" / "predictions" / "predictions.jsonl"
    ]  # default_root_dir without a logger
    assert [r["image_id"] for r in _rows(written[0])] == ["a.png", "b/a.JPG", "z.png"]


def test_vqa_questions_without_answers(tmp_path: Path, capsys):
    vqa = write_fake_vqa(tmp_path / "vqa", num_images=2)
    questions = [
        {
            "question_id": "q1",
            "image": "train2014/COCO_train2014_000000000100.jpg",
            "question": "What color?",
        },
        {"question_id": 5, "image": "train2014/COCO_train2014_000000000101.jpg", "question": "Is it red?"},
    ]
    path = _write_jsonl(tmp_path / "questions.jsonl", questions)
    written = _predict(
        "vqa_v2",
        tmp_path / "run",
        capsys,
        f"--data.init_args.predict_questions=[{path}]",
        f"--data.init_args.answer_list={vqa['answer_list']}",
        f"--data.init_args.image_root={vqa['image_root']}",
        "--trainer.logger=false",
    )
    rows = _rows(written[0])
    answers = json.loads(vqa["answer_list"].read_text())
    assert [r["question_id"] for r in rows] == ["q1", 5] and all(r["answer"] in answers for r in rows)


def test_retrieval_images_only_then_texts_only(tmp_path: Path, capsys):
    images = write_fake_dataset(tmp_path / "images", num_images=3).parent
    only_images = _write_jsonl(
        tmp_path / "images.jsonl", [{"image": "1.png"}, {"image": "0.png", "image_id": 9}]
    )
    run = ["--trainer.logger=false", f"--data.init_args.image_root={images}"]
    out = tmp_path / "run1" / "predictions"
    written = _predict(
        "retrieval_coco", out.parent, capsys, f"--data.init_args.predict_annotations=[{only_images}]", *run
    )
    assert sorted(written) == [out / "images.jsonl", out / "images.safetensors"]  # no texts file
    assert _rows(out / "images.jsonl") == [{"index": 0, "image_id": "1.png"}, {"index": 1, "image_id": "9"}]
    embeds = load_file(str(out / "images.safetensors"))
    assert embeds["ids"].tolist() == [0, 1] and embeds["image_embeds"].shape == (2, 32)
    torch.testing.assert_close(embeds["image_embeds"].norm(dim=-1), torch.ones(2))  # ITC features

    texts = [{"caption": "A red square."}, {"caption": ["a blue box", "two words"]}]
    only_texts = _write_jsonl(tmp_path / "texts.jsonl", texts)
    out = tmp_path / "run2" / "predictions"
    written = _predict(
        "retrieval_coco", out.parent, capsys, f"--data.init_args.predict_annotations=[{only_texts}]", *run
    )
    assert sorted(written) == [out / "texts.jsonl", out / "texts.safetensors"]  # no images file
    rows = _rows(out / "texts.jsonl")
    assert rows == [
        {"text_index": 0, "caption": "a red square"},
        {"text_index": 1, "caption": "a blue box"},
        {"text_index": 2, "caption": "two words"},
    ]
    assert load_file(str(out / "texts.safetensors"))["text_embeds"].shape == (3, 32)


def test_a_second_predict_refuses_to_overwrite_the_first(tmp_path: Path, capsys):
    folder = write_fake_dataset(tmp_path / "images", num_images=2).parent
    args = [f"--data.init_args.predict_images={folder}", "--trainer.logger=false"]
    first = _predict("caption_coco", tmp_path / "run", capsys, *args)[0]
    before = first.read_text()
    with pytest.raises(FileExistsError, match=re.escape(str(first))):
        _predict("caption_coco", tmp_path / "run", capsys, *args)
    assert first.read_text() == before
