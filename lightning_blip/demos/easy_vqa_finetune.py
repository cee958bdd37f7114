"""``lightning_blip easy-vqa-finetune``: captioning, VQA and retrieval fine-tuned from the quickstart.

Each task starts from the MED that ``lightning_blip quickstart`` pretrained (``--pretrained``, by
default the newest ``outputs/quickstart/**/last.ckpt``), is evaluated, fine-tuned briefly on the
easy-VQA train split with its recipe (``recipes/easy_vqa_<task>.yaml``) and evaluated again on the
test split:

- captioning (``CaptionFinetune``): CIDEr-D and BLEU-4 of beam-search captions;
- VQA (``VQAFinetune``, ranking the 13 answers): VQA accuracy, beside the majority-answer baseline;
- retrieval (``RetrievalFinetune``): R@1 of ITC + ITM re-ranking, on one test image per distinct
  caption (captions repeat across images), beside chance.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from lightning_blip.data.easy_vqa import easy_vqa_image_root, easy_vqa_questions, write_easy_vqa_captions
from lightning_blip.demos.paths import RECIPES

TASKS = ("caption", "vqa", "retrieval")
METRICS = {
    "caption": ("val/cider", "val/bleu4"),
    "vqa": ("val/vqa_acc",),
    "retrieval": ("val/txt_r1", "val/img_r1"),
}


def newest_checkpoint(root: Path) -> Path | None:
    """The most recently written ``last.ckpt`` under ``root``, if any."""
    found = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def write_distinct_captions(test_json: Path, out: Path) -> int:
    """Keep the first test image of each distinct caption (a retrieval set without ambiguous hits)."""
    records, seen = [], set()
    for record in json.loads(test_json.read_text()):
        if record["caption"] not in seen:
            seen.add(record["caption"])
            records.append(record)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(out)
    return len(records)


def run_task(
    task: str, recipe: str, pretrained: Path, out: Path, data_args: list[str], overrides: list[str]
) -> dict:
    """Validate, fine-tune (validating at the end); ``{"before": {...}, "after": {...}, "evaluated": n}``
    with the validation metrics and the number of validation items they cover."""
    from lightning_blip.cli_lightning import BlipCLI

    cli = BlipCLI(
        args=["-c", recipe, f"--model.init_args.init_weights={pretrained}"]
        + [f"--trainer.default_root_dir={out / task}", f"--trainer.logger.init_args.save_dir={out}"]
        + data_args
        + overrides,
        run=False,
    )
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    limit, size = cli.trainer.limit_val_batches, len(cli.datamodule.datasets["val"])
    evaluated = (
        min(size, int(limit * cli.datamodule.eval_batch_size))
        if isinstance(limit, int)
        else int(size * limit)
    )
    return {"before": {k: float(v) for k, v in before.items()}, "after": after, "evaluated": evaluated}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning_blip easy-vqa-finetune", description=__doc__)
    parser.add_argument(
        "--pretrained", default=None, help="MEDPretrain checkpoint (default: the quickstart's)"
    )
    parser.add_argument("--output-dir", default="outputs/easy_vqa_finetune")
    parser.add_argument("--recipes", default=str(RECIPES), help="folder of the easy_vqa_<task>.yaml recipes")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    args, overrides = parser.parse_known_args(argv)  # the rest goes to every task's CLI

    pretrained = Path(args.pretrained) if args.pretrained else newest_checkpoint(Path("outputs/quickstart"))
    if pretrained is None or not pretrained.is_file():
        parser.error(
            f"no pretrained checkpoint {pretrained or 'under outputs/quickstart'}: run `lightning_blip quickstart` first"
        )
    out = Path(args.output_dir)
    files = write_easy_vqa_captions(out / "data")
    distinct = out / "data" / "test_distinct.json"
    num_distinct = write_distinct_captions(Path(files["test"]), distinct)
    image_root = f"--data.init_args.image_root={easy_vqa_image_root()}"
    data_args = {
        "caption": [
            f"--data.init_args.train_annotations={files['train']}",
            f"--data.init_args.val_annotations={files['test']}",
            image_root,
        ],
        "vqa": [f"--data.init_args.output_dir={out / 'vqa_data'}"],
        "retrieval": [
            f"--data.init_args.train_annotations={files['train']}",
            f"--data.init_args.val_annotations={distinct}",
            image_root,
        ],
    }

    results = {}
    for task in args.tasks:
        print(f"\n[{task}] from {pretrained}")
        recipe = str(Path(args.recipes) / f"easy_vqa_{task}.yaml")
        results[task] = run_task(task, recipe, pretrained, out, data_args[task], overrides)
    train_answers = Counter(q["answer"] for q in easy_vqa_questions("train"))
    majority = train_answers.most_common(1)[0][0]
    evaluated = results["vqa"]["evaluated"] if "vqa" in results else None  # the first n test questions
    test_answers = [q["answer"] for q in easy_vqa_questions("test")][:evaluated]
    baselines = {
        "val/vqa_acc": ("majority answer", sum(a == majority for a in test_answers) / len(test_answers)),
        "val/txt_r1": ("chance", 1 / num_distinct),
        "val/img_r1": ("chance", 1 / num_distinct),
    }

    print("\neasy-VQA test split, before and after fine-tuning from the quickstart's model")
    print(f"  {'task':10}{'metric':14}{'before':>9}{'after':>9}   baseline")
    for task, result in results.items():
        for metric in METRICS[task]:
            before, after = (
                result["before"].get(metric, float("nan")),
                result["after"].get(metric, float("nan")),
            )
            name, value = baselines.get(metric, ("", None))
            baseline = f"   {name} {value:.3f}" if value is not None else ""
            print(f"  {task:10}{metric.removeprefix('val/'):14}{before:9.3f}{after:9.3f}{baseline}")
    results["baselines"] = {k: v for k, (_, v) in baselines.items()}
    return results


if __name__ == "__main__":
    main()
