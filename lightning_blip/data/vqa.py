"""VQA data: VQAv2 question/annotation files or BLIP's flat files, answer weights, batches, DataModules.

Two layouts, mixed freely:

* VQAv2: a question file ``{"data_subtype": "train2014", "questions": [{"question_id", "image_id",
  "question"}]}`` and an annotation file ``{"annotations": [{"question_id", "answers": [{"answer"},
  ...], "answer_type", ...}]}``, joined on ``question_id``; image paths come from ``image_template``
  (COCO names by default).
* BLIP's flat files (``.json`` list or ``.jsonl``): records ``{"question_id", "question", "image",
  "answer": str | [str], "dataset": "vqa" | "vg"}`` (no ``answer`` in test files).

Malformed records are skipped with a warning and counted (as for captions); so are unreadable images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lightning_blip.checks import check_config
from lightning_blip.data.annotations import (
    check_annotation_file,
    json_lines,
    parse_records,
    read_json,
)
from lightning_blip.data.datamodule import ImageTextDataModule, Paths, check_annotation_files
from lightning_blip.data.dataset import SkippingImageDataset
from lightning_blip.data.text import pre_question
from lightning_blip.data.transforms import eval_transform, train_transform
from lightning_blip.models.blip.vqa import MAX_QUESTION_TOKENS, tokenize_answers, tokenize_questions

log = logging.getLogger(__name__)

COCO_IMAGE_TEMPLATE = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
VG_WEIGHT = 0.2  # BLIP's weight of a Visual Genome answer


@dataclass(frozen=True)
class VQARecord:
    """One question about one image.

    Attributes:
        question_id: the data set's id (None if a flat record has none).
        image: image path relative to the image root.
        question: the raw question.
        answers: every annotator's answer (repeats kept; empty when unknown, as in test files).
        answer_type: VQAv2's ``yes/no`` / ``number`` / ``other`` when given.
        source: ``"vqa"``, or ``"vg"`` for Visual Genome (its answers weigh ``VG_WEIGHT`` in BLIP).
    """

    question_id: int | str | None
    image: str
    question: str
    answers: tuple[str, ...] = ()
    answer_type: str | None = None
    source: str = "vqa"


def answer_weights(
    answers: Sequence[str], source: str = "vqa", vg_weight: float = VG_WEIGHT
) -> tuple[list[str], list[float]]:
    """Unique answers (first-seen order) and their weights, as BLIP's VQA dataset computes them.

    VQA: an answer's weight is its share of the annotators (count / total). VG: ``vg_weight`` each.
    """
    weights: dict[str, float] = {}
    for answer in answers:
        share = vg_weight if source == "vg" else 1 / len(answers)
        weights[answer] = share if source == "vg" else weights.get(answer, 0.0) + share
    return list(weights), list(weights.values())


def _scalar_id(raw: dict, key: str, required: bool = True) -> int | str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        raise TypeError(f"'{key}' must be an integer or a string")
    return value


def _question_text(raw: dict) -> str:
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing or empty 'question'")
    return question


def _check_object(raw: Any) -> dict:
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, got {type(raw).__name__}")
    return raw


def parse_flat_record(raw: Any) -> VQARecord:
    """One record of BLIP's flat VQA files; raises ``TypeError``/``ValueError`` saying what is wrong."""
    raw = _check_object(raw)
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError("missing or empty 'image'")
    answer = raw.get("answer", [])
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError("'answer' must be a string or a list of strings")
    source = raw.get("dataset", "vqa")
    if source not in ("vqa", "vg"):
        raise ValueError(f"'dataset' must be 'vqa' or 'vg', got {source!r}")
    answer_type = raw.get("answer_type")
    return VQARecord(
        _scalar_id(raw, "question_id", required=False),
        image,
        _question_text(raw),
        tuple(answers),
        answer_type if isinstance(answer_type, str) else None,
        source,
    )


def parse_vqav2_question(raw: Any, subtype: str, image_template: str) -> VQARecord:
    """One entry of a VQAv2 question file (answers are joined later from the annotation file)."""
    raw = _check_object(raw)
    image_id = _scalar_id(raw, "image_id")
    return VQARecord(
        _scalar_id(raw, "question_id"),
        image_template.format(subtype=subtype, image_id=image_id),
        _question_text(raw),
    )


def parse_vqav2_annotation(raw: Any) -> tuple[int | str, tuple[str, ...], str | None]:
    """One entry of a VQAv2 annotation file -> ``(question_id, annotator answers, answer_type)``."""
    raw = _check_object(raw)
    answers = raw.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError("'answers' must be a non-empty list")
    texts = [a.get("answer") if isinstance(a, dict) else None for a in answers]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("every entry of 'answers' needs a string 'answer'")
    answer_type = raw.get("answer_type")
    return _scalar_id(raw, "question_id"), tuple(texts), answer_type if isinstance(answer_type, str) else None


def _read_questions(path: Path, image_template: str) -> tuple[list[VQARecord], int]:
    if path.suffix == ".jsonl":
        return parse_records(path, json_lines(path), parse_flat_record)
    data = read_json(path)
    if isinstance(data, list):
        return parse_records(path, ((f"record {i}", r) for i, r in enumerate(data)), parse_flat_record)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise TypeError(f"{path}: expected a VQAv2 question file ('questions' list) or a list of records")
    subtype = data.get("data_subtype")
    if "{subtype}" in image_template and not (isinstance(subtype, str) and subtype):
        raise ValueError(
            f"{path}: no 'data_subtype' (e.g. train2014), which image_template {image_template!r} needs"
        )
    items = ((f"question {i}", r) for i, r in enumerate(data["questions"]))
    return parse_records(path, items, lambda raw: parse_vqav2_question(raw, subtype, image_template))


def _read_answers(path: Path) -> tuple[dict, int]:
    check_annotation_file(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise TypeError(f"{path}: expected a VQAv2 annotation file (an object with an 'annotations' list)")
    items = ((f"annotation {i}", r) for i, r in enumerate(data["annotations"]))
    parsed, skipped = parse_records(path, items, parse_vqav2_annotation)
    return {qid: (answers, kind) for qid, answers, kind in parsed}, skipped


def _as_list(paths: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def load_vqa(
    questions: str | Path | Sequence[str | Path],
    annotations: str | Path | Sequence[str | Path] | None = None,
    image_template: str = COCO_IMAGE_TEMPLATE,
    require_answers: bool = False,
) -> tuple[list[VQARecord], int]:
    """Read question files (VQAv2 or flat) and join VQAv2 annotations; returns records and skips.

    ``require_answers`` (training, validation): a question without answers is skipped and counted
    (one warning for all). Raises, naming the file, as
    :func:`~lightning_blip.data.annotations.load_annotations` does.
    """
    try:
        image_template.format(subtype="train2014", image_id=1)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"image_template {image_template!r} must use only {{subtype}} and {{image_id}}: {err!r}"
        ) from err
    records: list[VQARecord] = []
    skipped = 0
    for path in _as_list(questions):
        check_annotation_file(path)
        parsed, bad = _read_questions(path, image_template)
        records += parsed
        skipped += bad
    answers: dict = {}
    for path in _as_list(annotations):
        found, bad = _read_answers(path)
        answers.update(found)
        skipped += bad
    joined = []
    for record in records:
        if not record.answers and record.question_id in answers:
            found, kind = answers[record.question_id]
            record = VQARecord(record.question_id, record.image, record.question, found, kind, record.source)
        joined.append(record)
    if require_answers:
        unanswered = sum(not r.answers for r in joined)
        if unanswered:
            log.warning("skipping %d questions without answers (no annotation matched)", unanswered)
            joined = [r for r in joined if r.answers]
            skipped += unanswered
    return joined, skipped


def load_answer_list(path: str | Path) -> list[str]:
    """BLIP's answer list: a ``.json`` list of candidate answer strings (VQAv2: 3,128)."""
    path = Path(path)
    check_annotation_file(path)
    data = read_json(path)
    if not isinstance(data, list) or not data or not all(isinstance(a, str) for a in data):
        raise ValueError(f"{path}: an answer list must be a non-empty JSON list of strings")
    return data


class VQADataset(SkippingImageDataset):
    """One item per question.

    Args:
        records: VQA records.
        image_root: folder the records' image paths are relative to.
        transform: PIL image -> ``(3, H, W)`` tensor.
        max_question_words: ``pre_question`` word limit (BLIP: 50).
        substitute_corrupt, max_substitutions: see :class:`SkippingImageDataset`.
        vg_image_root: folder of Visual Genome records' images (default: ``image_root``).
        vg_weight: weight of a Visual Genome answer (BLIP: 0.2).
    """

    def __init__(
        self,
        records: Sequence[VQARecord],
        image_root: str | Path,
        transform,
        max_question_words: int = 50,
        substitute_corrupt: bool = False,
        max_substitutions: int = 16,
        vg_image_root: str | Path | None = None,
        vg_weight: float = VG_WEIGHT,
    ) -> None:
        super().__init__(image_root, transform, substitute_corrupt, max_substitutions)
        self.records = list(records)
        self.max_question_words = max_question_words
        self.vg_image_root = Path(vg_image_root).absolute() if vg_image_root else None
        self.vg_weight = vg_weight

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, seed: int | None) -> dict[str, Any] | None:
        """``{"image": (3, H, W), "question", "answers", "weights", "gt_answers", "answer_type",
        "question_id", "index"}`` or ``None``; ``answers`` are unique with their ``weights``."""
        record = self.records[index]
        relpath = record.image
        if record.source == "vg" and self.vg_image_root is not None:
            relpath = self.vg_image_root / record.image
        image = self._read_image(relpath, index, seed)
        if image is None:
            return None
        answers, weights = answer_weights(record.answers, record.source, self.vg_weight)
        return {
            "image": image,
            "question": pre_question(record.question, self.max_question_words),
            "answers": answers,
            "weights": weights,
            "gt_answers": list(record.answers),
            "answer_type": record.answer_type,
            "question_id": record.question_id,
            "index": index,
        }


class VQACollator:
    """Turn a list of :class:`VQADataset` items (``None`` for a skipped image) into a batch.

    Returns ``{"image": (B, 3, H, W), "question_ids": (B, Lq), "question_mask": (B, Lq),
    "answer_ids": (A, La), "answer_mask": (A, La), "weights": (A,) float, "n_answers": (B,) long,
    "gt_answers": B lists of str, "answer_type": B str | None, "question_id": B ids,
    "index": (B,) long, "num_skipped": int}``: each question's unique answers, flattened in order.
    Ids are ``[CLS] ... [SEP]`` (the model swaps in [ENC] / [DEC]); questions are cut at
    ``max_question_length`` tokens (BLIP: 35), answers only at ``max_answer_length`` if given.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_question_length: int = MAX_QUESTION_TOKENS,
        max_answer_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_question_length = max_question_length
        self.max_answer_length = max_answer_length

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        empty = torch.zeros(0, 0, dtype=torch.long)
        if kept:
            images = torch.stack([item["image"] for item in kept])
            q_ids, q_mask = tokenize_questions(
                self.tokenizer, [item["question"] for item in kept], self.max_question_length
            )
        else:
            images, q_ids, q_mask = torch.zeros(0, 3, 0, 0), empty, empty
        answers = [a for item in kept for a in item["answers"]]
        if answers:
            a_ids, a_mask = tokenize_answers(self.tokenizer, answers, self.max_answer_length)
        else:
            a_ids, a_mask = empty, empty
        return {
            "image": images,
            "question_ids": q_ids,
            "question_mask": q_mask,
            "answer_ids": a_ids,
            "answer_mask": a_mask,
            "weights": torch.tensor([w for item in kept for w in item["weights"]], dtype=torch.float),
            "n_answers": torch.tensor([len(item["answers"]) for item in kept], dtype=torch.long),
            "gt_answers": [item["gt_answers"] for item in kept],
            "answer_type": [item["answer_type"] for item in kept],
            "question_id": [item["question_id"] for item in kept],
            "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
            "num_skipped": len(items) - len(kept) + sum(item.get("num_skipped", 0) for item in kept),
        }


class VQADataModule(ImageTextDataModule):
    """VQA fine-tuning and evaluation data; batches as documented in :class:`VQACollator`.

    Sampling, resume and loaders are :class:`ImageTextDataModule`'s.

    Args:
        train_questions, val_questions, test_questions: VQAv2 question files or flat files.
        train_annotations, val_annotations, test_annotations: VQAv2 annotation files joined on
            ``question_id`` (not needed for flat files; optional for test).
        predict_questions: question files for ``predict`` (``None``: ``test_questions`` and
            ``test_annotations``); questions need no answer (flat ``{"image", "question"}`` records,
            ``question_id`` kept when given).
        answer_list: ``.json`` list of candidate answers for ranking (``self.answer_list``).
        image_root: folder of the images (VQAv2: the folder holding ``train2014/`` ...).
        vg_image_root: folder of Visual Genome images of flat ``"dataset": "vg"`` records (like
            ``image_root``, checked to be a folder at ``setup``).
        image_template: VQAv2 image path from the question file's ``data_subtype`` and ``image_id``.
        image_size: square side in pixels (BLIP ViT-B VQA: 480).
        batch_size, eval_batch_size, num_workers, crop_scale, randaugment, vocab, seed, pin_memory:
            as in :class:`ImageTextDataModule`.
        max_question_words: ``pre_question`` word limit (BLIP: 50).
        max_question_length: question tokens (BLIP: 35).
        max_answer_length: answer tokens (None: no limit, as BLIP).
        vg_weight: weight of a Visual Genome answer (BLIP: 0.2).
    """

    def __init__(
        self,
        train_questions: Paths = None,
        train_annotations: Paths = None,
        val_questions: Paths = None,
        val_annotations: Paths = None,
        test_questions: Paths = None,
        test_annotations: Paths = None,
        predict_questions: Paths = None,
        answer_list: str | None = None,
        image_root: str = ".",
        vg_image_root: str | None = None,
        image_template: str = COCO_IMAGE_TEMPLATE,
        image_size: int = 480,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        max_question_words: int = 50,
        max_question_length: int = MAX_QUESTION_TOKENS,
        max_answer_length: int | None = None,
        vg_weight: float = VG_WEIGHT,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        randaugment: bool = True,
        vocab: str | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            image_root=image_root,
            image_size=image_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            crop_scale=crop_scale,
            randaugment=randaugment,
            vocab=vocab,
            seed=seed,
            pin_memory=pin_memory,
        )
        check_config("max_question_words", max_question_words >= 1, "at least 1", max_question_words)
        check_annotation_files("predict_questions", predict_questions)
        self.vqa_files = {
            "train": (train_questions, train_annotations),
            "val": (val_questions, val_annotations),
            "test": (test_questions, test_annotations),
            "predict": (predict_questions, None) if predict_questions else (test_questions, test_annotations),
        }
        self.answer_list_path = answer_list
        self.answer_list: list[str] | None = None
        self.vg_image_root = vg_image_root
        self.image_template = image_template
        self.max_question_words = max_question_words
        self.vg_weight = vg_weight
        self.collator = VQACollator(self.tokenizer, max_question_length, max_answer_length)

    def image_folders(self) -> dict[str, str]:
        """``image_root``, and ``vg_image_root`` when set."""
        folders = super().image_folders()
        if self.vg_image_root:
            folders["vg_image_root"] = self.vg_image_root
        return folders

    def setup(self, stage: str) -> None:
        """Load the stage's questions (see :meth:`ImageTextDataModule.setup`) and the answer list."""
        if self.answer_list_path and self.answer_list is None:
            self.answer_list = load_answer_list(self.answer_list_path)
        super().setup(stage)

    def _load(self, split: str, required: bool) -> None:
        questions, annotations = self.vqa_files[split]
        if not questions:
            if required:
                hint = " (nor test_questions)" if split == "predict" else ""
                raise ValueError(f"{split}_questions is not set{hint} (--data.init_args.{split}_questions)")
            return
        records, skipped = load_vqa(
            questions, annotations, self.image_template, require_answers=split not in ("test", "predict")
        )
        if not records:
            raise ValueError(f"{split}_questions {questions}: no valid question ({skipped} skipped)")
        if skipped:
            log.warning("%s questions: skipped %d malformed or unanswered records", split, skipped)
        self.num_skipped_records[split] = skipped
        train = split == "train"
        transform = (
            train_transform(self.image_size, self.crop_scale, self.randaugment)
            if train
            else eval_transform(self.image_size)
        )
        self.datasets[split] = VQADataset(
            records,
            self.image_root,
            transform,
            self.max_question_words,
            substitute_corrupt=train,
            vg_image_root=self.vg_image_root,
            vg_weight=self.vg_weight,
        )


class EasyVQADataModule(VQADataModule):
    """The offline easy-VQA set in the VQAv2 layout, written on first use (``prepare_data``).

    Train on its train split; validate, test and predict on its test split; rank its 13 answers.

    Args:
        output_dir: where the question, annotation and answer-list files are written.
        **kwargs: the other :class:`VQADataModule` arguments.
    """

    def __init__(self, output_dir: str = "outputs/easy_vqa_vqa", **kwargs: Any) -> None:
        from lightning_blip.data.easy_vqa import EASY_VQA_IMAGE_TEMPLATE, easy_vqa_image_root

        out = Path(output_dir)
        files = {
            split: (str(out / f"{split}_questions.json"), str(out / f"{split}_annotations.json"))
            for split in ("train", "test")
        }
        super().__init__(
            train_questions=files["train"][0],
            train_annotations=files["train"][1],
            val_questions=files["test"][0],
            val_annotations=files["test"][1],
            test_questions=files["test"][0],
            test_annotations=files["test"][1],
            answer_list=str(out / "answer_list.json"),
            image_root=str(easy_vqa_image_root()),
            image_template=EASY_VQA_IMAGE_TEMPLATE,
            **kwargs,
        )
        self.output_dir = out

    def prepare_data(self) -> None:
        from lightning_blip.data.easy_vqa import write_easy_vqa_vqav2

        names = ("train_questions", "train_annotations", "test_questions", "test_annotations", "answer_list")
        if not all((self.output_dir / f"{name}.json").is_file() for name in names):
            write_easy_vqa_vqav2(self.output_dir)
