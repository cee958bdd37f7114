"""Time BLIP's ITM re-ranking of the ITC top k: ours versus the per-pair loop, on the same weights.

N images and 5N captions (random tokens), ITC features of all of them, the ITC similarity matrix and
its top-k lists (k texts per image, k images per text). Both sides then produce the two re-ranked
score matrices (ITM match logit + ITC similarity on the top k, -100 elsewhere) and must agree.

Ours:   ``forward_image`` once per image (batched), then
        :func:`lightning_blip.models.shared.retrieval.rerank`: the pairs grouped by image, each image's
        cross-attention keys/values projected once and shared by all its candidate texts, a pair in
        both top-k lists scored once.
Naive:  for every query, its k pairs in one batch, each pair with its own ViT pass and ITM pass
        (the image run through the ViT again per pair and its keys/values projected per pair) -
        what scoring "ViT + ITM per pair" costs.
BLIP-style (``--blip-style``): salesforce/BLIP's ``evaluation()``, which keeps the ViT tokens but
        repeats them per pair, so every ITM pass projects the image's keys/values again.

Untimed: model construction, ITC features and the top-k selection (the same for both). One run per
side after a short warm-up; fp32 on CPU with a fixed thread count and ``torch.set_flush_denormal``.

Usage::

    python benchmarks/retrieval_rerank.py                       # small preset, N=100, k=8
    python benchmarks/retrieval_rerank.py --preset tiny --k 32  # the tests' tiny model (32 px)
    python benchmarks/retrieval_rerank.py --num-images 200 --threads 1
    python benchmarks/retrieval_rerank.py --blip-style          # + salesforce/BLIP's loop
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from timing import prepare_torch
from torch import Tensor

from lightning_blip.models.blip import BlipConfig, BlipModel, MEDConfig
from lightning_blip.models.shared.retrieval import NOT_RANKED, rerank, topk_masks
from lightning_blip.models.shared.vision import VisionConfig

PRESETS = {
    # BLIP-shaped (patch 16, head dim 64, FFN 4x, ViT and text of one width) but small enough for CPU:
    # 100 + 1 image tokens (a 160-px ViT-B/16; BLIP's 384 px give 576 + 1), 4 ViT blocks, 4 text layers.
    "small": {"image_size": 160, "width": 256, "vision_depth": 4, "text_layers": 4, "heads": 4},
    # the same shape a little larger: 144 + 1 image tokens, 6 ViT blocks, 6 text layers.
    "medium": {"image_size": 192, "width": 256, "vision_depth": 6, "text_layers": 6, "heads": 4},
    # the tests' tiny model (tests/tiny.yaml): 32 px, 8-px patches, 2 ViT blocks of 48, 2 text layers of 64
    "tiny": {"image_size": 32, "width": 64, "vision_depth": 2, "text_layers": 2, "heads": 4},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--num-images", type=int, default=100, help="N images; 5N captions")
    p.add_argument("--texts-per-image", type=int, default=5)
    p.add_argument("--k", type=int, default=8, help="ITC candidates re-ranked per query")
    p.add_argument("--text-length", type=int, default=20, help="longest caption in tokens (rows: 50-100%%)")
    p.add_argument("--batch-size", type=int, default=256, help="ours: texts per ITM pass")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blip-style", action="store_true", help="also time salesforce/BLIP's own loop")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace) -> BlipModel:
    """A randomly initialised BLIP of the preset's size, in eval mode."""
    size = PRESETS[args.preset]
    if args.preset == "tiny":
        timm_kwargs = {"embed_dim": 48, "depth": 2, "num_heads": 4, "patch_size": 8}
    else:
        timm_kwargs = {
            "embed_dim": size["width"],
            "depth": size["vision_depth"],
            "num_heads": size["heads"],
            "patch_size": 16,
        }
    vision = VisionConfig("vit_tiny_patch16_224", image_size=size["image_size"], timm_kwargs=timm_kwargs)
    text = MEDConfig(
        hidden_size=size["width"],
        num_layers=size["text_layers"],
        num_heads=size["heads"],
        intermediate_size=4 * size["width"],
    )
    return BlipModel(BlipConfig(vision=vision, text=text, embed_dim=min(256, size["width"]))).eval()


def make_data(args: argparse.Namespace, image_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Images ``(N, 3, S, S)``, caption ids and mask ``(5N, L)`` ([CLS] ... [SEP], right-padded)."""
    n_img, n_txt, length = args.num_images, args.num_images * args.texts_per_image, args.text_length
    pixel_values = torch.randn(n_img, 3, image_size, image_size)
    ids = torch.randint(1000, 20000, (n_txt, length))
    lengths = torch.randint(length // 2, length + 1, (n_txt,))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(n_txt), lengths - 1] = 102
    return pixel_values, ids * mask, mask


@torch.no_grad()
def ours(model: BlipModel, pixel_values, image_feats, text_feats, ids, mask, args) -> tuple[Tensor, Tensor]:
    """ViT once per image, then :func:`rerank` -> (i2t, t2i) ``(N, 5N)``."""
    image_embeds = torch.cat([model.forward_image(chunk) for chunk in pixel_values.split(64)])
    out = rerank(model, image_embeds, image_feats, text_feats, ids, mask, args.k, batch_size=args.batch_size)
    return out.i2t, out.t2i


@torch.no_grad()
def per_query(model: BlipModel, pixel_values, image_embeds, sim, ids, mask, k: int) -> tuple[Tensor, Tensor]:
    """Each query's k pairs in one ITM pass with the image tokens given per pair -> (i2t, t2i).

    ``image_embeds=None`` (naive): every pair runs its image through the ViT. Otherwise
    (salesforce/BLIP): the cached tokens, repeated per pair. Either way each pass projects the
    cross-attention keys/values of every pair's image again.
    """

    def tokens(rows: Tensor) -> Tensor:  # (k,) image rows -> (k, 1 + N, Dv)
        return model.forward_image(pixel_values[rows]) if image_embeds is None else image_embeds[rows]

    i2t, t2i = torch.full_like(sim, NOT_RANKED), torch.full_like(sim, NOT_RANKED)
    k_txt, k_img = min(k, sim.shape[1]), min(k, sim.shape[0])
    for i in range(sim.shape[0]):
        top = sim[i].topk(k_txt)
        image = tokens(torch.full((k_txt,), i))
        i2t[i, top.indices] = model.itm_logits(ids[top.indices], mask[top.indices], image_embeds=image)[:, 1]
        i2t[i, top.indices] += top.values
    for j in range(sim.shape[1]):
        top = sim[:, j].topk(k_img)
        text_ids, text_mask = ids[j].expand(k_img, -1), mask[j].expand(k_img, -1)
        t2i[top.indices, j] = model.itm_logits(text_ids, text_mask, image_embeds=tokens(top.indices))[:, 1]
        t2i[top.indices, j] += top.values
    return i2t, t2i


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_torch(args)
    model = build_model(args)
    pixel_values, ids, mask = make_data(args, model.config.vision.image_size)
    with torch.no_grad():
        image_feats = torch.cat([model.encode_image(chunk) for chunk in pixel_values.split(64)])
        text_feats = model.encode_text(ids, mask)
        sim = model.similarity(image_feats, text_feats)
    i2t_mask, t2i_mask = topk_masks(sim, args.k)
    pairs = int((i2t_mask | t2i_mask).sum())
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads; "
        f"preset {args.preset}: {model.config.vision.image_size} px, {model.visual_encoder.width}-wide ViT, "
        f"text {model.config.text.hidden_size} x {model.config.text.num_layers}"
    )
    print(
        f"{args.num_images} images x {len(ids)} texts, k={args.k}: {int(i2t_mask.sum())} image-to-text + "
        f"{int(t2i_mask.sum())} text-to-image pairs ({pairs} distinct)"
    )

    # warm-up on a slice (allocator, kernels), untimed
    w = min(4, args.num_images)
    wt = w * args.texts_per_image
    sub = (pixel_values[:w], image_feats[:w], text_feats[:wt], ids[:wt], mask[:wt])
    ours(model, *sub, args)
    per_query(model, sub[0], None, sim[:w, :wt], sub[3], sub[4], args.k)

    (ours_i2t, ours_t2i), t_ours = timed(
        lambda: ours(model, pixel_values, image_feats, text_feats, ids, mask, args)
    )
    results = {}
    results["naive"], t_naive = timed(lambda: per_query(model, pixel_values, None, sim, ids, mask, args.k))
    rows = int(i2t_mask.sum() + t2i_mask.sum())
    print(f"ours : {t_ours:8.2f} s  ({args.num_images} ViT passes, {pairs} ITM rows)")
    print(f"naive: {t_naive:8.2f} s  ({rows} ViT passes and ITM rows)")
    print(f"ratio: naive / ours = {t_naive / t_ours:.2f}x")
    if args.blip_style:
        with torch.no_grad():
            image_embeds = torch.cat([model.forward_image(chunk) for chunk in pixel_values.split(64)])
        results["blip-style"], t_blip = timed(
            lambda: per_query(model, None, image_embeds, sim, ids, mask, args.k)
        )
        print(f"salesforce/BLIP-style: {t_blip:8.2f} s  (ViT cached, {rows} ITM rows, keys/values per row)")
        print(f"ratio: BLIP-style / ours = {t_blip / t_ours:.2f}x")
    ok = True
    for name, (i2t, t2i) in results.items():
        diff = max((ours_i2t - i2t).abs().max().item(), (ours_t2i - t2i).abs().max().item())
        same = torch.equal(ours_i2t != NOT_RANKED, i2t != NOT_RANKED) and torch.equal(
            ours_t2i != NOT_RANKED, t2i != NOT_RANKED
        )
        print(f"scores vs {name}: max |difference| = {diff:.2e}, same top-k entries: {same}")
        ok = ok and same and diff <= 1e-4
    if not ok:
        print("MISMATCH: the re-rankings differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
