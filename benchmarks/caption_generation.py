"""Time BLIP caption generation with the KV cache against recomputing everything each step.

Same model, same weights, same images, one run: greedy decoding and beam search (3 beams) through
``lightning_blip.models.shared.generation.generate_ids`` with

- ``use_cache=True``: the image's cross-attention keys/values are projected once per image (shared by
  its beams, never copied per beam) and the self-attention keys/values are cached, so each step runs
  the decoder on one new token per row;
- ``use_cache=False``: each step runs the decoder over the whole prefix of every row with the image
  tokens, projecting the image's cross-attention keys/values again (per row: per beam).

Both must produce the same token ids (checked). The ViT forward that precedes generation is the same
for both; it is timed on its own and the ratio is also given with it included.

Usage::

    python benchmarks/caption_generation.py                # ViT-B-wide, 6-layer MED, 4 images, ~2 min
    python benchmarks/caption_generation.py --threads 1    # steadier on a shared machine
    python benchmarks/caption_generation.py --image-size 384 --batch-size 2   # BLIP's captioning size

Benchmark hygiene (as ``pretrain_step.py``, whose helpers this script imports): weights normal(0,
0.02), ``torch.set_flush_denormal(True)``, a fixed thread count, warm-up, interleaved repeats reported
as median / min / max and the median of per-round ratios, FLOPs per call from ``FlopCounterMode``, a
warning when repeats vary by more than 1.5x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch
from timing import add_timing_arguments, count_flops, prepare_torch, reinit_, timed

from lightning_blip.models.blip import BlipConfig, BlipModel, MEDConfig
from lightning_blip.models.shared.generation import generate_ids
from lightning_blip.models.shared.vision import VisionConfig

PROMPT_IDS = [30522, 1037, 3861, 1997]  # [DEC] a picture of


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--vision-depth", type=int, default=6)
    p.add_argument("--width", type=int, default=768, help="ViT and text width (ViT-B / BERT-base: 768)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--text-layers", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=30524)
    p.add_argument("--batch-size", type=int, default=4, help="images")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--min-length", type=int, default=5)
    add_timing_arguments(p, warmup=1, repeats=5)
    return p.parse_args(argv)


def build(args) -> BlipModel:
    vision = VisionConfig(
        "vit_base_patch16_224",
        image_size=args.image_size,
        timm_kwargs={
            "patch_size": args.patch_size,
            "embed_dim": args.width,
            "depth": args.vision_depth,
            "num_heads": args.heads,
        },
    )
    text = MEDConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.width,
        num_layers=args.text_layers,
        num_heads=args.heads,
        intermediate_size=args.ffn,
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = BlipModel(BlipConfig(vision=vision, text=text)).eval()
    reinit_(model)
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush = prepare_torch(args)
    model = build(args)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    prompt = torch.tensor([PROMPT_IDS] * args.batch_size)
    tokens = (args.image_size // args.patch_size) ** 2 + 1
    print("BLIP caption generation: KV cache vs recomputing everything each step (fp32, CPU)")
    print(
        f"  torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
        f"flush_denormal {flush}"
    )
    print(
        f"  ViT width {args.width} depth {args.vision_depth} @ {args.image_size}px ({tokens} image tokens); "
        f"MED width {args.width}, {args.text_layers} layers, {args.heads} heads, FFN {args.ffn}, vocab "
        f"{args.vocab_size}; {args.batch_size} images, prompt '[DEC] a picture of', max_length "
        f"{args.max_length}, min_length {args.min_length} (both counting the prompt)"
    )

    with torch.no_grad():
        image_embeds = model.forward_image(pixel_values)
    kw = {"max_length": args.max_length, "min_length": args.min_length}
    calls = {}
    for mode, beams in (("greedy", 1), (f"beam {args.num_beams}", args.num_beams)):
        for cache in (True, False):
            calls[(mode, cache)] = lambda beams=beams, cache=cache: generate_ids(
                model, image_embeds, prompt, num_beams=beams, use_cache=cache, **kw
            )
    vit = lambda: model.forward_image(pixel_values)

    with torch.no_grad():
        outputs = {key: fn() for key, fn in calls.items()}
        for mode in {m for m, _ in calls}:
            same = torch.equal(outputs[(mode, True)], outputs[(mode, False)])
            print(
                f"  {mode}: cached and recomputed ids identical: {same}, shape {tuple(outputs[(mode, True)].shape)}"
            )
            if not same:
                return 1
        flops = {key: count_flops(fn) for key, fn in calls.items()}
        flops["vit"] = count_flops(vit)
        for _ in range(args.warmup):
            for fn in calls.values():
                fn()
        times: dict = {key: [] for key in calls} | {"vit": []}
        order = [*calls, "vit"]
        for i in range(args.repeats):
            for key in order if i % 2 == 0 else order[::-1]:
                times[key].append(timed(calls[key] if key != "vit" else vit))

    print(f"\nseconds per call ({args.repeats} interleaved repeats after {args.warmup} warm-up):")
    med = {key: statistics.median(ts) for key, ts in times.items()}
    print(
        f"  ViT forward ({args.batch_size} images): median {med['vit']:.3f} s, {flops['vit'] / 1e9:.1f} GFLOPs"
    )
    print("  | decoding | FLOPs cached / recomputed | median s (min) cached | median s (min) recomputed | "
          "ratio of medians | per-round ratio | with the ViT |")  # fmt: skip
    for mode in dict.fromkeys(m for m, _ in calls):
        c, r = times[(mode, True)], times[(mode, False)]
        per_round = statistics.median(b / a for a, b in zip(c, r))
        with_vit = (med[(mode, False)] + med["vit"]) / (med[(mode, True)] + med["vit"])
        print(
            f"  | {mode} | {flops[(mode, True)] / 1e9:.1f} G / {flops[(mode, False)] / 1e9:.1f} G | "
            f"{med[(mode, True)]:.3f} ({min(c):.3f}) | {med[(mode, False)]:.3f} ({min(r):.3f}) | "
            f"{med[(mode, False)] / med[(mode, True)]:.2f}x | {per_round:.2f}x | {with_vit:.2f}x |"
        )
    noisy = [str(key) for key, ts in times.items() if max(ts) > 1.5 * min(ts)]
    if noisy:
        print(f"  warning: repeats vary by more than 1.5x for {', '.join(noisy)} (a busy machine): rerun")
    return 0


if __name__ == "__main__":
    sys.exit(main())
