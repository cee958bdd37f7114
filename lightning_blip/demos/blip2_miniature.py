"""``lightning_blip blip2-miniature``: BLIP-2's two stages on easy-VQA, offline, on the CPU.

1. A small causal LM (GPT-2-shaped, word-level vocabulary) learns easy-VQA text only: captions, and
   captions followed by a question and its answer. It is then frozen.
2. Stage 1 (``recipes/blip2_miniature_stage1.yaml``): a small Q-Former learns ITC + ITM + ITG on
   the easy-VQA captions. BLIP-2 freezes a pretrained ViT; nothing pretrained is available offline,
   and with a frozen random ViT stage 2 learned to ignore the visual prompt (its zero-shot answers
   were no better than the LM's from the question alone), so this stage also trains the small ViT,
   unless ``--vision-weights`` names a local ViT file (then kept frozen, as in the paper).
3. Stage 2 (``recipes/blip2_miniature_stage2.yaml``): the ViT from stage 1, frozen; the stage-1
   Q-Former's outputs become soft prompts of the frozen LM, trained on captions alone.
4. Zero-shot VQA on the easy-VQA test questions: the LM sees [queries; "question: ... short
   answer:"] and has never been trained on an image with a question. The script prints its exact-match
   accuracy next to the majority-answer baseline, the LM given the question only (its text prior), and
   the LM given the true caption before the question (what a perfect visual prompt would give).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lightning_blip.data.easy_vqa import easy_vqa_image_root, easy_vqa_questions, write_easy_vqa_captions
from lightning_blip.data.easy_vqa_text import VQA_PROMPT, answer_type, easy_vqa_lm_texts
from lightning_blip.data.transforms import eval_transform
from lightning_blip.demos.paths import RECIPES
from lightning_blip.metrics.vqa import normalize_answer
from lightning_blip.models.blip2.small_llm import tiny_llm_config, tokenizer_for, train_word_tokenizer
from lightning_blip.optim import WarmupCosineLR
from lightning_blip.tasks.causal_lm import CausalLMTraining

Answerer = Callable[[list[dict]], list[str]]
CONFIG = "--model.init_args.config"


def train_text_lm(
    texts: list[str], out_dir: Path, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0
) -> Path:
    """Train a 2-layer GPT-2-shaped LM (width 128) on ``texts``; save it with its tokenizer to ``out_dir``."""
    L.seed_everything(seed, verbose=False)
    tokenizer = tokenizer_for("gpt2", train_word_tokenizer(texts, vocab_size=200))
    config = tiny_llm_config(
        "gpt2", tokenizer, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512
    )
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    task = CausalLMTraining(
        AutoModelForCausalLM.from_config(config),
        tokenizer,
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.01),
        lr_scheduler=partial(WarmupCosineLR, warmup_steps=min(50, steps // 10)),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=L.pytorch.loggers.CSVLogger(out_dir.parent, name="llm_logs"),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=25,
    )
    loader = DataLoader(texts, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=list)
    trainer.fit(task, loader)
    task.llm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def majority_answer(questions: list[dict]) -> str:
    """The most frequent answer of ``questions``."""
    return Counter(q["answer"] for q in questions).most_common(1)[0][0]


def vqa_accuracy_by_type(questions: list[dict], answers: list[str]) -> dict[str, float]:
    """Exact match (after the official answer normalisation) per answer type and ``overall``."""
    hits: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for q, a in zip(questions, answers, strict=True):
        kind = answer_type(q["answer"])
        counts[kind] += 1
        hits[kind] += normalize_answer(a) == q["answer"]
    result = {kind: hits[kind] / counts[kind] for kind in sorted(counts)}
    result["overall"] = sum(hits.values()) / max(1, len(questions))
    return result


def evaluate(answerer: Answerer, questions: list[dict], batch_size: int = 128) -> dict[str, float]:
    """Accuracy of ``answerer`` (a batch of question records -> answers) over ``questions``."""
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        answers += answerer(questions[start : start + batch_size])
    return vqa_accuracy_by_type(questions, answers)


def blip2_answerer(model, image_size: int, num_beams: int) -> Answerer:
    """Zero-shot answers of a ``Blip2ForGeneration`` from the images and questions of the records."""
    root, transform = easy_vqa_image_root(), eval_transform(image_size)

    @torch.no_grad()
    def answer(batch: list[dict]) -> list[str]:
        pixels = torch.stack([transform(Image.open(root / q["image"])) for q in batch])
        return model.answer(pixels, [q["question"] for q in batch], prompt=VQA_PROMPT, num_beams=num_beams)

    return answer


def text_only_answerer(
    llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, context: dict[str, str] | None = None
) -> Answerer:
    """Answers of the LM alone: from the question, or from ``context[image_id] + ". " + question``."""
    newline = tokenizer.convert_tokens_to_ids("\n")

    @torch.no_grad()
    def answer(batch: list[dict]) -> list[str]:
        prompts = [VQA_PROMPT.format(q["question"]) for q in batch]
        if context is not None:
            prompts = [f"{context[q['image_id']]}. {p}" for q, p in zip(batch, prompts)]
        tokens = tokenizer(prompts, padding="longest", padding_side="left", return_tensors="pt")
        out = llm.generate(
            **tokens,
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=newline,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = out[:, tokens.input_ids.shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    return answer


def _stage(recipe: str, out: Path, extra: list[str]):
    from lightning_blip.cli_lightning import BlipCLI

    args = ["-c", recipe, f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}"]
    return BlipCLI(args=args + [f"--data.init_args.output_dir={out / 'data'}"] + extra, run=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning_blip blip2-miniature", description=__doc__)
    parser.add_argument("--stage1-recipe", default=str(RECIPES / "blip2_miniature_stage1.yaml"))
    parser.add_argument("--stage2-recipe", default=str(RECIPES / "blip2_miniature_stage2.yaml"))
    parser.add_argument("--output-dir", default="outputs/blip2_miniature")
    parser.add_argument("--lm-steps", type=int, default=1500, help="training steps of the text-only LM")
    parser.add_argument("--vision-weights", default=None, help="a local ViT file for the frozen encoder")
    parser.add_argument("--num-questions", type=int, default=2000, help="test questions (random subset)")
    parser.add_argument("--num-beams", type=int, default=1, help="beams of the zero-shot answers (paper: 5)")
    args, overrides = parser.parse_known_args(argv)  # the rest goes to both stages' CLI

    out = Path(args.output_dir)
    captions = write_easy_vqa_captions(out / "data")
    train_captions = json.loads(Path(captions["train"]).read_text())
    test_captions = {r["image_id"]: r["caption"] for r in json.loads(Path(captions["test"]).read_text())}
    questions = [q for q in easy_vqa_questions("test") if q["image_id"] in test_captions]
    questions = random.Random(0).sample(questions, min(args.num_questions, len(questions)))

    print("\n[1/4] text-only LM on easy-VQA captions and caption + question + answer texts")
    texts = easy_vqa_lm_texts(train_captions, easy_vqa_questions("train"))
    llm_dir = train_text_lm(texts, out / "llm", args.lm_steps)

    print("\n[2/4] stage 1: Q-Former (ITC + ITM + ITG) on the easy-VQA captions")
    vision = [f"{CONFIG}.vision.weights={args.vision_weights}", f"{CONFIG}.freeze_vision=true"]
    vision = vision if args.vision_weights else []
    stage1 = _stage(args.stage1_recipe, out, vision + overrides)
    stage1.trainer.fit(stage1.model, datamodule=stage1.datamodule)
    stage1_checkpoint = stage1.trainer.checkpoint_callback.last_model_path
    vision_file = out / "vision.safetensors"  # stage 2's frozen ViT
    vit = stage1.model.model.blip2.image_encoder.visual_encoder.vit
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(vision_file))

    print("\n[3/4] stage 2: Q-Former outputs as soft prompts of the frozen LM, trained on captions")
    stage2 = _stage(
        args.stage2_recipe,
        out,
        [f"{CONFIG}.llm={llm_dir}", f"{CONFIG}.stage1_checkpoint={stage1_checkpoint}"]
        + [f"{CONFIG}.vision.weights={vision_file}"]
        + overrides,
    )
    stage2.trainer.fit(stage2.model, datamodule=stage2.datamodule)

    print(f"\n[4/4] zero-shot VQA on {len(questions)} easy-VQA test questions (exact match)")
    model = stage2.model.model.eval()
    results = {
        "majority": vqa_accuracy_by_type(
            questions, [majority_answer(easy_vqa_questions("train"))] * len(questions)
        ),
        "question_only": evaluate(text_only_answerer(model.llm, model.tokenizer), questions),
        "blip2": evaluate(blip2_answerer(model, stage2.datamodule.image_size, args.num_beams), questions),
        "true_caption": evaluate(text_only_answerer(model.llm, model.tokenizer, test_captions), questions),
    }
    names = {
        "majority": "majority answer (train)",
        "question_only": "LM, question only",
        "blip2": "BLIP-2 zero-shot",
        "true_caption": "LM, true caption + question",
    }
    kinds = [k for k in results["blip2"] if k != "overall"]
    print(f"  {'':26}{'overall':>9}" + "".join(f"{k:>9}" for k in kinds))
    for key, r in results.items():
        print(f"  {names[key]:26}{r['overall']:9.3f}" + "".join(f"{r[k]:9.3f}" for k in kinds))
    print(
        f"\nLM: {llm_dir}\nstage 1: {stage1_checkpoint}\nstage 2: {stage2.trainer.checkpoint_callback.last_model_path}"
    )
    return results


if __name__ == "__main__":
    main()
