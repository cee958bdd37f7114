"""``lightning_blip capfilt-demo``: CapFilt on real data, offline: does the filter find the wrong captions?

On the easy-VQA image-text set, the first ``--human`` train images keep their captions (the
"human-annotated" source) and the rest are the "web" source, where ``--noise`` of the captions are
replaced by another image's different caption. From the quickstart's pretrained MED, a filter
(retrieval recipe) and a captioner (captioning recipe) are fine-tuned on the human source but its
last ``--calibration`` images. The filter's ITM threshold is set on those held-out human images
(each with its own caption and with another one), where it best separates the two; CapFilt then
bootstraps the data set, the removal of web captions is scored against the known noise (precision,
recall), and a MED is pretrained (quickstart recipe) on the noisy and on the bootstrapped set and
their test R@1 compared.

Why a threshold other than BLIP's 0.5: the ITM head is trained on one match per two non-matches,
and a briefly fine-tuned filter puts true pairs near that prior (about 0.4 here) rather than near 1,
while it still ranks them far above wrong pairs (about 0.05). ``--threshold`` sets it by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
from itertools import pairwise
from pathlib import Path

from lightning_blip.data.easy_vqa import easy_vqa_image_root, write_easy_vqa_captions
from lightning_blip.demos.easy_vqa_finetune import newest_checkpoint, run_task
from lightning_blip.demos.paths import RECIPES


def add_noise(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], set[int]]:
    """Replace ``fraction`` of the captions by a different caption of another record; the indices replaced."""
    rng = random.Random(seed)
    noisy = sorted(rng.sample(range(len(records)), round(fraction * len(records))))
    out = [dict(r) for r in records]
    for i in noisy:
        out[i]["caption"] = rng.choice(
            [r["caption"] for r in records if r["caption"] != records[i]["caption"]]
        )
    return out, set(noisy)


def removal_scores(web: list[dict], shards: list[Path], noisy: set[int]) -> dict[str, float]:
    """Precision and recall of the web captions CapFilt removed, against the ``noisy`` indices of ``web``."""
    kept = set()
    for shard in shards:
        for row in map(json.loads, shard.read_text().splitlines()):
            if "web" in row["caption_origin"]:
                kept.add(row["image_id"])
    removed = {i for i, r in enumerate(web) if r["image_id"] not in kept}
    hits = len(removed & noisy)
    return {
        "precision": hits / len(removed) if removed else 0.0,
        "recall": hits / len(noisy) if noisy else 0.0,
        "removed": len(removed),
    }


def separating_threshold(matches: list[float], others: list[float]) -> float:
    """The threshold that puts the most of ``matches`` at or above it and of ``others`` below it:
    the midpoint between the two neighbouring scores where that count first peaks."""
    labelled = sorted([(p, 1) for p in matches] + [(p, 0) for p in others])
    correct = best = len(matches)  # below every score: every match kept, every other one too
    threshold = labelled[0][0] - 1e-6
    for (score, label), (following, _) in pairwise(labelled):
        correct += 1 if label == 0 else -1  # this score now falls below the threshold
        if correct > best:
            best, threshold = correct, (score + following) / 2
    return threshold


def calibrate_threshold(filter_checkpoint: Path, records: list[dict], seed: int) -> float:
    """:func:`separating_threshold` of the filter's ITM probabilities on ``records``, each with its own
    caption (a match) and with another record's different caption."""
    import torch
    from PIL import Image

    from lightning_blip.capfilt.filtering import score_texts
    from lightning_blip.data.transforms import eval_transform
    from lightning_blip.models.blip import BlipModel

    wrong, _ = add_noise(records, 1.0, seed)
    model = BlipModel.from_pretrained(filter_checkpoint).eval()
    root, transform = easy_vqa_image_root(), eval_transform(model.config.vision.image_size)
    matches: list[float] = []
    others: list[float] = []
    for start in range(0, len(records), 64):
        batch = list(zip(records[start : start + 64], wrong[start : start + 64]))
        pixels = torch.stack([transform(Image.open(root / r["image"]).convert("RGB")) for r, _ in batch])
        with torch.no_grad():
            itm, _ = score_texts(model, pixels, [[r["caption"], w["caption"]] for r, w in batch])
        matches += [float(pair[0]) for pair in itm]
        others += [float(pair[1]) for pair in itm]
    return separating_threshold(matches, others)


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning_blip capfilt-demo", description=__doc__)
    parser.add_argument(
        "--pretrained", default=None, help="MEDPretrain checkpoint (default: the quickstart's)"
    )
    parser.add_argument("--output-dir", default="outputs/capfilt_demo")
    parser.add_argument("--recipes", default=str(RECIPES))
    parser.add_argument("--human", type=int, default=1000, help="train images that form the human source")
    parser.add_argument("--noise", type=float, default=0.3, help="fraction of web captions made wrong")
    parser.add_argument(
        "--calibration", type=int, default=200, help="human images held out to set the ITM threshold"
    )
    parser.add_argument("--threshold", type=float, default=None, help="ITM threshold (default: calibrated)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument(
        "--capfilt-args", default="", help="overrides for `lightning_blip capfilt`, one string"
    )
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)  # the rest goes to the fine-tuning and pretraining CLIs

    pretrained = Path(args.pretrained) if args.pretrained else newest_checkpoint(Path("outputs/quickstart"))
    if pretrained is None or not pretrained.is_file():
        parser.error(
            f"no pretrained checkpoint {pretrained or 'under outputs/quickstart'}: run `lightning_blip quickstart` first"
        )
    out, recipes = Path(args.output_dir), Path(args.recipes)
    files = write_easy_vqa_captions(out / "data")
    train = json.loads(Path(files["train"]).read_text())
    human, web = train[: args.human], train[args.human :]
    noisy_web, noisy = add_noise(web, args.noise, args.seed)
    tuning, held_out = human[: len(human) - args.calibration], human[len(human) - args.calibration :]
    human_json, tuning_json, web_json = (
        _write(out / "data" / "human.json", human),
        _write(out / "data" / "human_finetune.json", tuning),
        _write(out / "data" / "web_noisy.json", noisy_web),
    )
    image_root = str(easy_vqa_image_root())

    models = {}
    for task in ("retrieval", "caption"):  # the filter and the captioner, both from the same pretrained MED
        data = [f"--data.init_args.train_annotations={tuning_json}", f"--data.init_args.val_annotations={files['test']}",
                f"--data.init_args.image_root={image_root}"]  # fmt: skip
        run_task(task, str(recipes / f"easy_vqa_{task}.yaml"), pretrained, out, data, overrides)
        models[task] = newest_checkpoint(out / task)

    threshold = args.threshold
    if threshold is None:
        threshold = calibrate_threshold(models["retrieval"], held_out, seed=args.seed)
    print(
        f"\nITM threshold {threshold:.3f} ({'given' if args.threshold is not None else 'calibrated on held-out human images'})"
    )

    from lightning_blip.capfilt.command import main as capfilt

    sources = [{"name": "human", "annotations": [str(human_json)], "human_annotated": True},
               {"name": "web", "annotations": [str(web_json)]}]  # fmt: skip
    summary = capfilt(
        [f"--captioner={models['caption']}", f"--filter={models['retrieval']}", f"--sources={json.dumps(sources)}",
         f"--image_root={image_root}", f"--output_dir={out / 'capfilt'}", "--image_size=64", "--shard_size=500",
         "--batch_size=64", "--num_workers=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
         "--captioning.max_length=12", f"--filtering.threshold={threshold}", *shlex.split(args.capfilt_args)]
    )  # fmt: skip
    shards = [out / "capfilt" / s for s in summary["shards"]]
    scores = removal_scores(noisy_web, shards, noisy)

    from lightning_blip.demos.quickstart import main as pretrain

    bootstrapped = [{k: v for k, v in row.items() if k != "caption_origin"} for s in shards
                    for row in map(json.loads, s.read_text().splitlines())]  # fmt: skip
    retrieval = {}
    for name, records in (("noisy", human + noisy_web), ("bootstrapped", bootstrapped)):
        run_dir = out / f"pretrain_{name}"
        _write(run_dir / "data" / "train.json", records)
        _write(run_dir / "data" / "test.json", json.loads(Path(files["test"]).read_text()))
        result = pretrain(["--recipe", str(recipes / "quickstart.yaml"), "--output-dir", str(run_dir),
                           f"--trainer.max_epochs={args.pretrain_epochs}", *overrides])  # fmt: skip
        retrieval[name] = result["after"]

    print(
        f"\nCapFilt on easy-VQA: {len(human)} human + {len(web)} web images, {len(noisy)} web captions wrong"
    )
    print(f"  removal of wrong web captions (ITM threshold {threshold:.3f}): precision {scores['precision']:.3f}  "
          f"recall {scores['recall']:.3f}"
          f"  ({scores['removed']} removed)")  # fmt: skip
    print("\npretrained on            image->text R@1  text->image R@1")
    for name, r in retrieval.items():
        print(f"  {name:22}{r['i2t_r1']:17.3f}{r['t2i_r1']:17.3f}")
    return {"removal": scores, "retrieval": retrieval, "capfilt": summary, "threshold": threshold}


if __name__ == "__main__":
    main()
