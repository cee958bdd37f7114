"""Time BLIP caption generation: ours against transformers' ``generate``, on the same weights.

One tiny random transformers ``BlipForConditionalGeneration`` is saved with ``save_pretrained`` and
loaded into our ``BlipModel`` with ``load_transformers_blip``. Both sides then caption the same
images with BLIP's captioning settings (prompt "a picture of ", ``max_length`` 20, ``min_length`` 5,
both counting the prompt), greedy and with beam search (3 beams):

- ours: ``generate_ids(model, model.forward_image(pixels), prompt)``, i.e. ``BlipModel.generate``
  without turning the prompt into ids and the ids into strings;
- transformers: ``BlipForConditionalGeneration.generate(pixel_values=..., input_ids=...)``.

Each call runs the ViT and the decoding and returns ids. The script checks that both sides give the
same ids (prints OK or MISMATCH, exit code 1 on a mismatch), then times the calls interleaved and
prints the ratio transformers / ours. Each side's ViT forward is also timed on its own, so that the
decoding's share of the ratio can be read off.

Usage::

    python benchmarks/generation_vs_transformers.py                 # tiny preset (the weight tests' sizes), batch 8, 2 threads
    python benchmarks/generation_vs_transformers.py --threads 1     # one thread: steadier on a shared machine
    python benchmarks/generation_vs_transformers.py --preset small  # 224 px: the ViT's share grows
    python benchmarks/generation_vs_transformers.py --profile      # + torch.profiler top ops per call

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
import tempfile

import torch
import transformers
from pretrain_step import PRESETS as PRETRAIN_PRESETS
from timing import (
    add_timing_arguments,
    count_flops,
    fill_from_preset,
    interleaved,
    prepare_torch,
    profile,
    reinit_,
)
from torch import Tensor

from lightning_blip.models.blip import BlipModel
from lightning_blip.models.blip.pretrained import blip_config_from_transformers
from lightning_blip.models.shared.generation import generate_ids
from lightning_blip.models.shared.tokenizer import default_tokenizer
from lightning_blip.weights.transformers_blip import load_transformers_blip

# the ViT of the weights tests/weights use (tests/conftest.py's tiny_vision; the same in BLIP-2's tests)
TINY_VISION = {"image_size": 32, "patch_size": 8, "vision_width": 48, "vision_depth": 2}
PRESETS = {
    # the weights tests/weights use (tests/conftest.py's tiny_vision and tiny_text; FFN 4x here)
    "tiny": {
        **TINY_VISION,
        "vision_heads": 4,
        "text_width": 64,
        "text_layers": 2,
        "text_heads": 4,
    },
    # BLIP-shaped (224 px, patch 16, head dim 64, FFN 4x) but small: pretrain_step.py's tiny, 4 deep
    "small": {
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 256,
        "vision_depth": 4,
        "vision_heads": 4,
        "text_width": 256,
        "text_layers": 4,
        "text_heads": 4,
    },
    # BLIP's captioner: ViT-B/16 + BERT-base (slow on CPU), as pretrain_step.py's base preset
    "base": {k: v for k, v in PRETRAIN_PRESETS["base"].items() if not k.endswith("_ffn")},
}

PROMPT = "a picture of "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="size flags override it")
    for name in PRESETS["tiny"]:
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}"
        )
    p.add_argument("--vocab-size", type=int, default=30524, help="bert-base-uncased + [DEC] + [ENC]")
    p.add_argument("--batch-size", type=int, default=8, help="images")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--min-length", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=1.0)
    add_timing_arguments(p, warmup=1, repeats=11, profile_rows=20)
    args = p.parse_args(argv)
    fill_from_preset(args, PRESETS)
    return args


def build_transformers(args) -> transformers.BlipForConditionalGeneration:
    """A random captioning model, weights normal(0, 0.02); vision eps 1e-6 as BLIP's ViT (and ours)."""
    vision = {
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "hidden_size": args.vision_width,
        "intermediate_size": 4 * args.vision_width,
        "num_hidden_layers": args.vision_depth,
        "num_attention_heads": args.vision_heads,
        "layer_norm_eps": 1e-6,
    }
    text = {
        "vocab_size": args.vocab_size,
        "hidden_size": args.text_width,
        "intermediate_size": 4 * args.text_width,
        "num_hidden_layers": args.text_layers,
        "num_attention_heads": args.text_heads,
        "encoder_hidden_size": args.vision_width,
    }
    config = transformers.BlipConfig(vision_config=vision, text_config=text)
    model = transformers.BlipForConditionalGeneration(config).eval()
    reinit_(model)  # the LM head is tied to the word embeddings, as in BLIP
    return model


def same_captions(a: Tensor, b: Tensor, sep: int, pad: int) -> bool:
    """Equal ids up to the first [SEP] (transformers may pad a finished row with [SEP] or [PAD])."""
    width = max(a.shape[1], b.shape[1])
    rows = []
    for ids in (a, b):
        ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)
        is_sep = (ids == sep).long()
        rows.append(ids.masked_fill(is_sep.cumsum(1) - is_sep > 0, pad))
    return torch.equal(*rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush = prepare_torch(args)

    hf = build_transformers(args)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        config, notes = blip_config_from_transformers(directory)
        ours = BlipModel(config).eval()
        report = load_transformers_blip(ours, directory)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    tokenizer = default_tokenizer()
    prompt = tokenizer([PROMPT] * args.batch_size, return_tensors="pt").input_ids  # [CLS] a picture of [SEP]
    tokens = (args.image_size // args.patch_size) ** 2 + 1

    print("BLIP caption generation: lightning_blip vs transformers' generate, same weights (fp32, CPU)")
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, python "
        f"{platform.python_version()}, threads {torch.get_num_threads()}, flush_denormal {flush}"
    )
    print(
        f"  preset {args.preset}: ViT width {args.vision_width} depth {args.vision_depth} heads "
        f"{args.vision_heads} @ {args.image_size}px ({tokens} image tokens); text width {args.text_width}, "
        f"{args.text_layers} layers, {args.text_heads} heads, FFN {4 * args.text_width}, vocab {args.vocab_size}"
    )
    print(
        f"  {args.batch_size} images, prompt {PROMPT!r}, max_length {args.max_length}, min_length "
        f"{args.min_length} (counting the prompt), length_penalty {args.length_penalty}; transformers "
        f"attention: {hf.config._attn_implementation}"
    )
    print(
        f"  weights: {len(report.loaded)} tensors loaded into ours, {len(report.missing_expected)} absent as "
        f"expected (encoder-only parts), missing {report.missing}, unexpected {report.unexpected}"
        + "".join(f"; note: {n}" for n in notes)
    )

    settings = {"max_length": args.max_length, "min_length": args.min_length}
    calls = {}
    for mode, beams in (("greedy", 1), (f"beam {args.num_beams}", args.num_beams)):
        penalty = {"length_penalty": args.length_penalty} if beams > 1 else {}
        calls[(mode, "ours")] = lambda beams=beams, penalty=penalty: generate_ids(
            ours, ours.forward_image(pixel_values), prompt[:, :-1], num_beams=beams, **settings, **penalty
        )
        calls[(mode, "transformers")] = lambda beams=beams, penalty=penalty: hf.generate(
            pixel_values=pixel_values, input_ids=prompt.clone(), do_sample=False, num_beams=beams,
            **settings, **penalty,
        )  # fmt: skip
    vits = {
        "ours": lambda: ours.forward_image(pixel_values),
        "transformers": lambda: hf.vision_model(pixel_values=pixel_values).last_hidden_state,
    }
    modes = list(dict.fromkeys(mode for mode, _ in calls))

    mismatch = False
    with torch.no_grad():
        same_vit = (vits["ours"]() - vits["transformers"]()).abs().max().item()
        print(f"  ViT outputs: max abs difference {same_vit:.1e}")
        for mode in modes:
            got, expected = calls[(mode, "ours")](), calls[(mode, "transformers")]()
            same = same_captions(got, expected, config.sep_token_id, config.pad_token_id)
            mismatch |= not same
            ended = int((got == config.sep_token_id).any(1).sum())
            print(
                f"  {mode}: ids {'OK (identical)' if same else 'MISMATCH'}, ours {tuple(got.shape)}, "
                f"transformers {tuple(expected.shape)}, {ended} of {args.batch_size} captions end with [SEP]"
            )
        flops = {key: count_flops(fn) for key, fn in calls.items()}
        flops |= {("ViT", side): count_flops(fn) for side, fn in vits.items()}
        times = interleaved({**calls, **{("ViT", side): fn for side, fn in vits.items()}}, args)

    med = {key: statistics.median(ts) for key, ts in times.items()}
    print(f"\nseconds per call ({args.repeats} interleaved repeats after {args.warmup} warm-up):")
    print("  | call | FLOPs ours / transformers | median s (min, max) ours | median s (min, max) transformers | "
          "transformers / ours: medians | per round | minimums |")  # fmt: skip
    for mode in [*modes, "ViT"]:
        o, t = times[(mode, "ours")], times[(mode, "transformers")]
        per_round = statistics.median(b / a for a, b in zip(o, t))
        print(
            f"  | {mode} | {flops[(mode, 'ours')] / 1e9:.1f} G / {flops[(mode, 'transformers')] / 1e9:.1f} G | "
            f"{med[(mode, 'ours')]:.3f} ({min(o):.3f}, {max(o):.3f}) | "
            f"{med[(mode, 'transformers')]:.3f} ({min(t):.3f}, {max(t):.3f}) | "
            f"**{med[(mode, 'transformers')] / med[(mode, 'ours')]:.2f}x** | {per_round:.2f}x | "
            f"{min(t) / min(o):.2f}x |"
        )
    print("  decoding alone (median call - median ViT forward of the same side):")
    for mode in modes:
        o, t = (med[(mode, side)] - med[("ViT", side)] for side in ("ours", "transformers"))
        print(f"    {mode}: ours {o:.3f} s, transformers {t:.3f} s, ratio {t / o:.2f}x")
    noisy = [" ".join(key) for key, ts in times.items() if max(ts) > 1.5 * min(ts)]
    if noisy:
        print(f"  warning: repeats vary by more than 1.5x for {', '.join(noisy)} (a busy machine): rerun")
    if args.profile:
        with torch.no_grad():
            for (mode, side), fn in calls.items():
                profile(f"{side}, {mode}", fn, args.profile_rows)
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
