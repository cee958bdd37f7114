"""Time BLIP-2 generation with an OPT LLM: ours against transformers' ``Blip2ForConditionalGeneration``.

Both sides hold the same weights: a small random transformers ``Blip2ForConditionalGeneration``
(EVA-style ViT, Q-Former, OPT) is saved and read back with ``Blip2ForGeneration.from_pretrained``.
Ours: ``Blip2ForGeneration.generate(pixels, prompt)`` (ViT, Q-Former query pass, projection, then our
decoding loop over the OPT's own parameters on ``[queries; BOS + prompt]``, text decoded).
transformers: ``generate`` with the processor's ids (``<image> x Q``, BOS, prompt) and the same stop
ids (EOS and a newline, as LAVIS). Before timing, the script checks that both sides give the same
text. Greedy and beam search, batch 8.

Usage::

    python benchmarks/blip2_generation_vs_transformers.py                 # tiny preset (the weight tests' sizes), 2 threads
    python benchmarks/blip2_generation_vs_transformers.py --threads 1     # one thread: steadier on a shared machine
    python benchmarks/blip2_generation_vs_transformers.py --preset small  # 224 px: ViT and Q-Former dominate
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile

import torch
import transformers
from generation_vs_transformers import TINY_VISION
from timing import add_timing_arguments, fill_from_preset, interleaved, prepare_torch, ratios

from lightning_blip.models.blip2 import Blip2ForGeneration
from lightning_blip.models.blip2.small_llm import (
    DEFAULT_TEXTS,
    tiny_llm_config,
    tokenizer_for,
    train_word_tokenizer,
)

PRESETS = {
    # the weights tests/weights use (test_blip2_weights_parity.py's hf_config; FFN 4x here)
    "tiny": {
        **TINY_VISION,
        "qformer_width": 32,
        "qformer_layers": 2,
        "llm_width": 24,
        "llm_layers": 2,
        "num_queries": 4,
    },
    # BLIP-2-shaped (224 px, patch 14, 32 queries) but small
    "small": {
        "image_size": 224,
        "patch_size": 14,
        "vision_width": 256,
        "vision_depth": 4,
        "qformer_width": 256,
        "qformer_layers": 4,
        "llm_width": 256,
        "llm_layers": 4,
        "num_queries": 32,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="size flags override it")
    for name in PRESETS["small"]:
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}"
        )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--prompt", default="a photo of")
    add_timing_arguments(p, warmup=1, repeats=11)
    args = p.parse_args(argv)
    fill_from_preset(args, PRESETS)
    return args


def build_transformers(args: argparse.Namespace):
    """A random transformers ``Blip2ForConditionalGeneration`` with an OPT LLM, and its tokenizer."""
    tokenizer = tokenizer_for("opt", train_word_tokenizer(DEFAULT_TEXTS))
    text = tiny_llm_config(
        "opt",
        tokenizer,
        hidden_size=args.llm_width,
        num_layers=args.llm_layers,
        num_heads=4,
        intermediate_size=4 * args.llm_width,
    )
    text.vocab_size = len(tokenizer) + 1  # room for the <image> token
    config = transformers.Blip2Config(
        vision_config={
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "num_hidden_layers": args.vision_depth,
            "hidden_size": args.vision_width,
            "intermediate_size": 4 * args.vision_width,
            "num_attention_heads": 4,
            "layer_norm_eps": 1e-6,
        },
        qformer_config={
            "hidden_size": args.qformer_width,
            "num_hidden_layers": args.qformer_layers,
            "num_attention_heads": 4,
            "intermediate_size": 4 * args.qformer_width,
        },
        text_config=text.to_dict(),
        num_query_tokens=args.num_queries,
        image_token_index=len(tokenizer),
    )
    model = transformers.Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # visible random weights (transformers' ViT init is ~1e-10)
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn_like(p) * 0.1
                + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0)
            )
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush = prepare_torch(args)

    hf, tokenizer = build_transformers(args)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        ours = Blip2ForGeneration.from_pretrained(directory).eval()
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    prompt = tokenizer([args.prompt] * args.batch_size, return_tensors="pt")
    image = torch.full((args.batch_size, args.num_queries), len(tokenizer), dtype=torch.long)
    ids = torch.cat([image, prompt.input_ids], dim=1)
    mask = torch.cat([torch.ones_like(image), prompt.attention_mask], dim=1)

    print("BLIP-2 (OPT) generation: lightning_blip vs transformers, same weights (fp32, CPU)")
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, python "
        f"{platform.python_version()}, threads {torch.get_num_threads()}, flush_denormal {flush}"
    )
    print(
        f"  preset {args.preset}: ViT {args.vision_width} x {args.vision_depth} @ {args.image_size}px, Q-Former {args.qformer_width} x "
        f"{args.qformer_layers}, {args.num_queries} queries, OPT {args.llm_width} x {args.llm_layers}; "
        f"{args.batch_size} images, prompt {args.prompt!r}, max {args.max_new_tokens} new tokens"
    )
    calls = {}
    for mode, beams in (("greedy", 1), (f"beam {args.num_beams}", args.num_beams)):
        settings = {"num_beams": beams, "max_new_tokens": args.max_new_tokens, "min_new_tokens": 1}
        calls[(mode, "ours")] = lambda settings=settings: ours.generate(
            pixels, prompt=args.prompt, **settings
        )
        calls[(mode, "transformers")] = lambda settings=settings: tokenizer.batch_decode(
            hf.generate(
                pixel_values=pixels, input_ids=ids, attention_mask=mask, eos_token_id=ours._eos_ids,
                pad_token_id=tokenizer.pad_token_id, do_sample=False, **settings,
            )[:, ids.shape[1] :],
            skip_special_tokens=True,
        )  # fmt: skip
    modes = list(dict.fromkeys(mode for mode, _ in calls))
    mismatch = False
    with torch.no_grad():
        for mode in modes:
            got = calls[(mode, "ours")]()
            expected = [t.split("\n", 1)[0].strip() for t in calls[(mode, "transformers")]()]
            same = got == expected
            mismatch |= not same
            print(f"  {mode}: text {'OK (identical)' if same else 'MISMATCH'}, e.g. {got[0]!r}")
        times = interleaved(calls, args)
    print(f"\nseconds per call ({args.repeats} interleaved repeats after {args.warmup} warm-up):")
    for mode in modes:
        o, t = times[(mode, "ours")], times[(mode, "transformers")]
        print(
            f"  {mode}: ours {statistics.median(o):.3f} (min {min(o):.3f}), transformers "
            f"{statistics.median(t):.3f} (min {min(t):.3f}); transformers / ours: "
            f"{ratios(times, (mode, 'transformers'), (mode, 'ours'))}"
        )
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
