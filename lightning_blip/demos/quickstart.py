"""``lightning_blip quickstart``: pretrain a small MED on easy-VQA captions, offline, on the CPU.

Writes the easy-VQA image-text set, measures zero-shot retrieval R@1 on the 1,000 test images,
trains with ``recipes/quickstart.yaml`` through the same CLI as every recipe, measures again,
prints a few captions and saves the loss curves as a PNG.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_blip.data.collate import ImageTextCollator
from lightning_blip.data.dataset import ImageTextDataset
from lightning_blip.demos.paths import RECIPES
from lightning_blip.metrics.retrieval import recall_at_1
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.shared.generation import decode_captions, greedy_decode

LOSSES = ("train/loss_itc", "train/loss_itm", "train/loss_lm")


@torch.no_grad()
def caption_retrieval_r1(model: BlipModel, dataset: ImageTextDataset, collator: ImageTextCollator) -> dict:
    """Image-to-text and text-to-image R@1 by ITC similarity, one caption per image.

    Captions repeat across images (they describe colour x shape x size), so a hit is a retrieved
    item that carries the right caption. Chance: the probability that a random item carries it.
    """
    was_training = model.training
    model.eval()
    image_feats, text_feats, captions = [], [], []
    for batch in DataLoader(dataset, batch_size=100, collate_fn=collator):
        image_feats.append(model.encode_image(batch["image"]))
        text_feats.append(model.encode_text(batch["input_ids"], batch["attention_mask"]))
        captions += batch["caption"]
    model.train(was_training)
    caption_id = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([caption_id[c] for c in captions])
    result = recall_at_1(torch.cat(image_feats), torch.cat(text_feats), ids)
    result["chance"] = sum((n / len(captions)) ** 2 for n in Counter(captions).values())
    return result


@torch.no_grad()
def sample_captions(model: BlipModel, dataset: ImageTextDataset, collator, tokenizer, n: int = 6) -> list:
    """(reference, generated) caption pairs for the first ``n`` items, greedy with no prompt."""
    batch = collator([dataset[i] for i in range(n)])
    image_embeds = model.forward_image(batch["image"])
    prompt = torch.full((n, 1), model.config.bos_token_id)
    ids = greedy_decode(model, image_embeds, prompt, max_length=12, min_length=3)
    return list(zip(batch["caption"], decode_captions(tokenizer, ids)))


def read_losses(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of each loss from a CSVLogger ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {name: [] for name in LOSSES}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for name in LOSSES:
                if row.get(name):
                    series[name].append((int(row["step"]), float(row[name])))
    return series


def plot_losses(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name.split("/")[-1])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("lightning_blip quickstart: MED pretraining on easy-VQA")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarise(series: dict) -> list[str]:
    """One line per loss: mean of its first and last fifth of logged steps."""
    lines = []
    for name, points in series.items():
        values = [v for _, v in points]
        if len(values) >= 2:
            k = max(1, len(values) // 5)
            first, last = sum(values[:k]) / k, sum(values[-k:]) / k
            lines.append(f"  {name.split('/')[-1]:<9} {first:7.3f} -> {last:7.3f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lightning_blip quickstart", description=__doc__)
    parser.add_argument("--recipe", default=str(RECIPES / "quickstart.yaml"))
    parser.add_argument("--output-dir", default="outputs/quickstart")
    args, overrides = parser.parse_known_args(argv)  # the rest goes to the CLI, e.g. --trainer.max_epochs=1

    from lightning_blip.cli_lightning import BlipCLI

    out = Path(args.output_dir)
    cli = BlipCLI(
        args=[
            "-c",
            args.recipe,
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            f"--data.init_args.output_dir={out / 'data'}",
        ]
        + overrides,
        run=False,
    )
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    datamodule.prepare_data()
    datamodule.setup("test")
    test_set, collator, tokenizer = datamodule.datasets["test"], datamodule.collator, datamodule.tokenizer
    blip = model.model.blip

    before = caption_retrieval_r1(blip, test_set, collator)
    trainer.fit(model, datamodule=datamodule)
    after = caption_retrieval_r1(blip, test_set, collator)
    captions = sample_captions(blip, test_set, collator, tokenizer)

    series = read_losses(Path(trainer.logger.log_dir) / "metrics.csv")
    plot_path = out / "loss_curve.png"
    plot_losses(series, plot_path)
    print("\nlosses (first fifth -> last fifth of training):", *summarise(series), sep="\n")
    print(f"\nretrieval on {len(test_set)} easy-VQA test images (hit = retrieved item has the right caption)")
    print(f"  {'':8}{'image->text R@1':>17}{'text->image R@1':>17}{'chance':>9}")
    for name, r in (("before", before), ("after", after)):
        print(f"  {name:8}{r['i2t_r1']:17.3f}{r['t2i_r1']:17.3f}{r['chance']:9.3f}")
    print("\ncaptions of test images (reference | generated):")
    for reference, generated in captions:
        print(f"  {reference:<24} | {generated}")
    print(f"\nloss curve: {plot_path}\ncheckpoints and logs: {trainer.logger.log_dir}")
    return {"before": before, "after": after, "captions": captions, "losses": series}


if __name__ == "__main__":
    main()
