"""The BLIP-2 miniature: its text data, its scoring, and the command end to end (shortened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_blip.data.easy_vqa_text import answer_type, easy_vqa_lm_texts, paraphrases
from lightning_blip.demos.blip2_miniature import main, majority_answer, vqa_accuracy_by_type

REPO = Path(__file__).resolve().parents[1]


def test_paraphrases_keep_every_attribute():
    assert paraphrases("a small red circle") == [
        "a small red circle",
        "a red circle that is small",
        "a small circle that is red",
    ]
    assert paraphrases("a red circle") == ["a red circle"]


def test_lm_texts_pair_each_kept_question_with_its_own_caption():
    captions = [
        {"image_id": "train/0", "caption": "a small red circle"},
        {"image_id": "train/1", "caption": "a large blue triangle"},
    ]
    questions = [
        {"image_id": "train/0", "question": "what color is the shape?", "answer": "red"},
        {"image_id": "train/1", "question": "what shape is in the image?", "answer": "triangle"},
        {"image_id": "train/2", "question": "what shape is present?", "answer": "circle"},  # no caption
    ] + [
        {"image_id": "train/1", "question": f"is there a blue shape {i}?", "answer": "yes"}
        for i in range(400)
    ]
    texts = easy_vqa_lm_texts(captions, questions, yes_no_fraction=0.25)
    assert texts[:2] == ["a small red circle\n", "a large blue triangle\n"]
    assert all(t.endswith("\n") and t.count("\n") == 1 for t in texts)
    red = [t for t in texts if "what color" in t]
    assert len(red) == 1 and red[0].endswith(". question: what color is the shape? short answer: red\n")
    assert red[0].split(". question")[0] in paraphrases("a small red circle")
    assert not any("present" in t for t in texts)
    kept_yes_no = sum("is there" in t for t in texts)
    assert 60 < kept_yes_no < 140  # about a quarter of 400
    assert easy_vqa_lm_texts(captions, questions) == easy_vqa_lm_texts(captions, questions)  # seeded


def test_answer_type_and_scoring():
    assert [answer_type(a) for a in ("yes", "teal", "rectangle")] == ["yes/no", "color", "shape"]
    with pytest.raises(ValueError, match="purple"):
        answer_type("purple")
    questions = [{"answer": a} for a in ("yes", "no", "no", "red", "circle")]
    assert majority_answer(questions) == "no"
    result = vqa_accuracy_by_type(questions, ["Yes", "yes", "no.", "a red", "square"])
    assert result == {
        "color": 1.0,
        "shape": 0.0,
        "yes/no": pytest.approx(2 / 3),
        "overall": pytest.approx(3 / 5),
    }


def test_miniature_runs_all_four_steps(tmp_path: Path, capsys):
    results = main(
        ["--stage1-recipe", str(REPO / "recipes" / "blip2_miniature_stage1.yaml"),
         "--stage2-recipe", str(REPO / "recipes" / "blip2_miniature_stage2.yaml"),
         "--output-dir", str(tmp_path), "--lm-steps", "4", "--num-questions", "24",
         "-c", str(REPO / "tests" / "tiny_blip2.yaml"),
         "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--data.init_args.num_workers=0"]
    )  # fmt: skip
    assert set(results) == {"majority", "question_only", "blip2", "true_caption"}
    for r in results.values():
        assert 0.0 <= r["overall"] <= 1.0
    assert (tmp_path / "llm" / "config.json").is_file() and (tmp_path / "vision.safetensors").is_file()
    assert list((tmp_path / "stage2").glob("version_*/checkpoints/last.ckpt"))
    out = capsys.readouterr().out
    assert "majority answer (train)" in out and "BLIP-2 zero-shot" in out
