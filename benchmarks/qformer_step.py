"""Time BLIP-2 Q-Former training steps: ours vs transformers, and stage 1 with and without the ITG cache.

Part ``qformer``: forward + backward of one Q-Former query pass over image features, ours versus
transformers, both in train mode with the same dropout and the same weights (copied from ours to
the reference by an explicit name mapping). Loss = mean of squares of the outputs.

Ours:       ``lightning_blip.models.blip2.qformer.QFormer`` called as ``qformer(image_embeds=feats)``.
Reference:  transformers' ``Blip2QFormerModel(query_embeds=queries, encoder_hidden_states=feats)``
            with the learnable queries held next to it (as ``Blip2Model`` does), in its default
            attention implementation (SDPA; with dropout in training torch runs SDPA's math kernel
            on CPU).

Part ``qformer-text``: the same over ``[queries; text]`` with bidirectional attention (the shape of
an ITM pass): ours ``qformer(input_ids, attention_mask, image_embeds=feats)``; the reference runs
``Blip2TextEmbeddings`` and ``Blip2QFormerModel(query_embeds=..., query_length=Q, attention_mask=...)``
as ``Blip2ForImageTextRetrieval`` does for ITM (``use_qformer_text_input=True``).

Before timing, both parts check in eval mode (dropout off) that the two sides' outputs agree within
1e-4 and print the max abs difference: the comparison is like for like.

Part ``stage1``: one BLIP-2 stage-1 step (frozen ViT forward, ITC, ITM on B positives + 2B sampled
in-batch hard negatives, ITG, backward) of ``Blip2ForPretraining(itg_cache=True)`` (ITG runs the
text alone on the cached keys/values of the query pass) versus ``itg_cache=False`` (ITG runs a second
pass over ``[queries; text]`` under the multimodal-causal mask), with identical weights. The frozen
ViT is a small timm ViT (``--vit-depth`` blocks) of the encoder width; its forward is timed on its own
so that its share of the step is printed. Its ITG losses are compared in eval mode (they must agree).

Usage::

    python benchmarks/qformer_step.py                     # tiny config, all parts, 2 threads
    python benchmarks/qformer_step.py --threads 1         # steadier on a shared machine, ~2.5 min
    python benchmarks/qformer_step.py --parts qformer     # only the Q-Former query pass
    python benchmarks/qformer_step.py --preset base       # the paper's Q-Former over ViT-g: > 10 min
    python benchmarks/qformer_step.py --profile           # also print the top ops of each side

Benchmark hygiene (as ``pretrain_step.py``, whose helpers this script imports): every
Linear/Embedding weight is re-initialised with normal(0, 0.02) and copied to the other side,
``torch.set_flush_denormal(True)``, a fixed thread count, warm-up steps, then interleaved repeats
reported as median / min / max, with a warning when a side's repeats vary by more than 1.5x.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable

import torch
from timing import (
    add_timing_arguments,
    count_flops,
    fill_from_preset,
    interleaved,
    make_batch,
    prepare_torch,
    profile,
    ratios,
    reinit_,
    report,
)
from torch import Tensor, nn

PRESETS = {
    # BERT-shaped but small, reading ViT-L/14-shaped features: a query-pass step takes ~0.3 s.
    "tiny": {
        "hidden_size": 256,
        "num_layers": 6,
        "num_heads": 4,
        "intermediate_size": 1024,
        "encoder_width": 1024,
        "image_size": 224,
        "patch_size": 14,
    },
    # The paper's Q-Former (BERT-base) reading EVA ViT-g/14 features at 224 px (257 tokens of 1408).
    "base": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
        "encoder_width": 1408,
        "image_size": 224,
        "patch_size": 14,
    },
}
PARTS = ("qformer", "qformer-text", "stage1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; size flags override the preset."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="size preset; 'base' = the paper's Q-Former over ViT-g features. Size flags override it.",
    )
    for name in PRESETS["tiny"]:
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}"
        )
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to time")
    p.add_argument("--num-queries", type=int, default=32)
    p.add_argument("--cross-attention-freq", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=30523, help="bert-base-uncased + [DEC]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--text-length", type=int, default=32, help="padded text length (rows get 60-100%% of it)")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden dropout on both sides (BLIP-2: 0.1)")
    p.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="attention-probability dropout on both sides (default: --dropout); on CPU any value > 0 "
        "keeps both sides off SDPA's fused kernel",
    )
    p.add_argument(
        "--vit-depth",
        type=int,
        default=1,
        help="blocks of the frozen ViT in part stage1 (0: patch embedding only)",
    )
    p.add_argument("--vit-heads", type=int, default=16, help="heads of the frozen ViT in part stage1")
    p.add_argument("--embed-dim", type=int, default=256, help="ITC projection width (stage1)")
    add_timing_arguments(p, warmup=2, repeats=9, profile_rows=25)
    args = p.parse_args(argv)
    fill_from_preset(args, PRESETS)
    if args.attention_dropout is None:
        args.attention_dropout = args.dropout
    args.image_tokens = (args.image_size // args.patch_size) ** 2 + 1
    return args


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def qformer_config(args: argparse.Namespace):
    """Our Q-Former configuration for these sizes."""
    from lightning_blip.models.blip2 import QFormerConfig

    return QFormerConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        encoder_width=args.encoder_width,
        cross_attention_freq=args.cross_attention_freq,
        num_query_tokens=args.num_queries,
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
    )


class Reference(nn.Module):
    """transformers' Q-Former with the learnable queries and text embeddings that its callers hold."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel
        from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

        config = Blip2QFormerConfig(
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads,
            intermediate_size=args.intermediate_size,
            hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.attention_dropout,
            cross_attention_frequency=args.cross_attention_freq,
            encoder_hidden_size=args.encoder_width,
            use_qformer_text_input=True,
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, args.num_queries, args.hidden_size))
        self.embeddings = Blip2TextEmbeddings(config)
        self.qformer = Blip2QFormerModel(config)

    def forward(self, feats: Tensor, input_ids: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Query pass (or ``[queries; text]`` when ``input_ids`` are given) -> ``(B, Q [+ L], D)``."""
        queries = self.query_tokens.expand(feats.shape[0], -1, -1)
        if input_ids is None:
            return self.qformer(query_embeds=queries, encoder_hidden_states=feats).last_hidden_state
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=mask.dtype), mask], dim=1)
        return self.qformer(
            query_embeds=embeds,
            query_length=queries.shape[1],
            attention_mask=mask,
            encoder_hidden_states=feats,
        ).last_hidden_state


ATTENTION_NAMES = {
    "attention.query": "attention.query",
    "attention.kv.key": "attention.key",
    "attention.kv.value": "attention.value",
    "dense": "output.dense",
    "norm": "output.LayerNorm",
}
FFN_NAMES = {"intermediate": "intermediate{}.dense", "output": "output{}.dense", "norm": "output{}.LayerNorm"}


def reference_name(name: str) -> str:
    """Our ``QFormer`` parameter name -> the same parameter's name in :class:`Reference`."""
    module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    if name == "query_tokens" or module in ("embeddings.word_embeddings", "embeddings.position_embeddings"):
        return name
    if module == "embeddings.norm":
        return f"qformer.layernorm.{leaf}"
    _, index, sublayer, rest = module.split(".", 3)  # layers.<i>.<sublayer>.<rest>
    prefix = f"qformer.encoder.layer.{index}"
    if sublayer in ("self_attn", "cross_attn"):
        target = "attention" if sublayer == "self_attn" else "crossattention"
        return f"{prefix}.{target}.{ATTENTION_NAMES[rest]}.{leaf}"
    suffix = "_query" if sublayer == "ffn_query" else ""
    return f"{prefix}.{FFN_NAMES[rest].format(suffix)}.{leaf}"


def build_qformers(args: argparse.Namespace) -> tuple[nn.Module, Reference]:
    """Our Q-Former (normal(0, 0.02) weights) and the reference loaded with the same weights."""
    from lightning_blip.models.blip2 import QFormer

    ours = QFormer(qformer_config(args))
    reinit_(ours)
    ref = Reference(args)
    state = {reference_name(name): tensor for name, tensor in ours.state_dict().items()}
    ref.load_state_dict(state, strict=True)  # every parameter of both sides is mapped, shapes match
    return ours.train(), ref.train()


def build_stage1(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """``Blip2ForPretraining`` with ``itg_cache=True`` and ``False``, identical weights, train mode."""
    from lightning_blip.models.blip2 import Blip2Config, Blip2ForPretraining
    from lightning_blip.models.shared.vision import VisionConfig

    vision = VisionConfig(
        model_name="vit_base_patch16_224",
        image_size=args.image_size,
        final_norm=False,
        timm_kwargs={
            "embed_dim": args.encoder_width,
            "depth": args.vit_depth,
            "num_heads": args.vit_heads,
            "patch_size": args.patch_size,
        },
    )
    config = Blip2Config(
        vision=vision,
        qformer=qformer_config(args),
        embed_dim=args.embed_dim,
        frozen_vision_dtype="float32",
    )
    cached = Blip2ForPretraining(config, itg_cache=True)
    reinit_(cached)
    uncached = Blip2ForPretraining(config, itg_cache=False)
    uncached.load_state_dict(cached.state_dict())
    return cached.train(), uncached.train()


def training_step(model: nn.Module, forward: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """zero_grad, forward, mean-of-squares loss, backward."""

    def step() -> Tensor:
        model.zero_grad(set_to_none=True)
        loss = forward().pow(2).mean()
        loss.backward()
        return loss.detach()

    return step


def compare_qformer(args: argparse.Namespace, text: bool) -> None:
    """Part ``qformer`` (``text=False``) or ``qformer-text``: parity check, FLOPs, timing, ratio."""
    g = torch.Generator().manual_seed(args.seed)
    # ln_vision output stand-in; it needs a gradient because ln_vision is trained in stage 1
    feats = torch.randn(args.batch_size, args.image_tokens, args.encoder_width, generator=g)
    feats.requires_grad_(True)
    _, input_ids, mask = make_batch(args)
    ours, ref = build_qformers(args)
    if text:
        title = f"[queries; text] pass, bidirectional (ITM-shaped), text length {args.text_length}"
        forwards = {
            "ours": lambda: ours(input_ids, mask, image_embeds=feats).last_hidden_state,
            "transformers": lambda: ref(feats, input_ids, mask),
        }
    else:
        title = "query pass"
        forwards = {
            "ours": lambda: ours(image_embeds=feats).last_hidden_state,
            "transformers": lambda: ref(feats),
        }
    print(f"\n== Q-Former {title}: forward + backward, ours vs transformers ==")
    print(
        f"  transformers attention: {ref.qformer.config._attn_implementation}; with attention dropout > 0 "
        "in training both sides run unfused attention on CPU (ours: matmul, softmax, dropout, matmul; "
        "transformers: SDPA's math fallback)"
    )
    ours.eval()
    ref.eval()
    with torch.no_grad():
        out = {name: fn() for name, fn in forwards.items()}
    diff = (out["ours"] - out["transformers"]).abs().max().item()
    verdict = "OK" if diff <= 1e-4 else "MISMATCH: the comparison is not like for like"
    shape = tuple(out["ours"].shape)
    print(f"  parity (eval, dropout off): outputs {shape}, max abs diff {diff:.2e} ({verdict})")
    ours.train()
    ref.train()
    steps = {
        "ours": training_step(ours, forwards["ours"]),
        "transformers": training_step(ref, forwards["transformers"]),
    }
    flops = {name: count_flops(step) for name, step in steps.items()}
    print(
        "  FLOPs per step (torch FlopCounterMode): "
        + ", ".join(f"{name} {f / 1e9:.2f} G" for name, f in flops.items())
    )
    times = interleaved(steps, args)
    medians = report(times, args)
    print(f"  ratio transformers / ours (> 1: ours is faster): {ratios(times, 'transformers', 'ours')}")
    speed = ", ".join(f"{name} {flops[name] / medians[name] / 1e9:.0f}" for name in steps)
    print(f"  GFLOP/s at the median: {speed}")
    if args.profile:
        for name, step in steps.items():
            profile(f"{name}, Q-Former {title}", step, args.profile_rows)


def compare_stage1(args: argparse.Namespace) -> None:
    """Part ``stage1``: ``itg_cache=True`` vs ``False``, plus the frozen ViT's own forward time."""
    from lightning_blip.losses.itm import NegativeSampler

    pixel_values, input_ids, mask = make_batch(args)
    models = dict(zip(("itg_cache=True", "itg_cache=False"), build_stage1(args)))
    sampler = NegativeSampler("sample", "local")
    print("\n== BLIP-2 stage-1 step (ITC + ITM + ITG, backward): ITG on cached query keys/values or not ==")
    print(
        f"  frozen ViT: {args.vit_depth} block(s), width {args.encoder_width}, {args.vit_heads} heads, "
        f"patch {args.patch_size} @ {args.image_size}px ({args.image_tokens} tokens); "
        "negatives: NegativeSampler('sample', 'local')"
    )

    def stage1_step(model: nn.Module) -> Callable[[], Tensor]:
        def step() -> Tensor:
            model.zero_grad(set_to_none=True)
            out = model(pixel_values, input_ids, mask, negative_sampler=sampler)
            loss = out.loss_itc + out.loss_itm + out.loss_lm
            loss.backward()
            return loss.detach()

        return step

    with torch.no_grad():  # eval: the two ITG forms must give the same loss
        losses = []
        for model in models.values():
            torch.manual_seed(args.seed)
            losses.append(model.eval()(pixel_values, input_ids, mask, negative_sampler=sampler).loss_lm)
            model.train()
    diff = abs(losses[0] - losses[1]).item()
    print(f"  parity (eval, dropout off): ITG loss {losses[0]:.5f} vs {losses[1]:.5f}, abs diff {diff:.2e}")
    vit = models["itg_cache=True"].blip2.image_encoder
    steps = {name: stage1_step(model) for name, model in models.items()}
    steps["frozen ViT fwd (in both)"] = lambda: vit(pixel_values)
    flops = {name: count_flops(step) for name, step in steps.items()}
    print(
        "  FLOPs per step (torch FlopCounterMode): "
        + ", ".join(f"{name} {f / 1e9:.2f} G" for name, f in flops.items())
    )
    times = interleaved(steps, args)
    cached, uncached, vit_s = report(times, args).values()
    print(f"  ratio itg_cache=False / itg_cache=True: {ratios(times, 'itg_cache=False', 'itg_cache=True')}")
    without_vit = (uncached - vit_s) / (cached - vit_s)
    print(
        f"  without the frozen ViT (median step - median ViT forward): {without_vit:.2f}x; "
        f"the ViT forward is {vit_s / cached:.0%} of the median cached step"
    )
    if args.profile:
        for name in models:
            profile(f"stage 1, {name}", steps[name], args.profile_rows)


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts and print their timings."""
    args = parse_args(argv)
    flush = prepare_torch(args)
    import transformers

    print("BLIP-2 Q-Former training steps: lightning_blip vs transformers (fp32, CPU)")
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}, threads {torch.get_num_threads()}, flush_denormal {flush}"
    )
    print(
        f"  preset {args.preset}: Q-Former hidden {args.hidden_size}, {args.num_layers} layers, "
        f"{args.num_heads} heads, FFN {args.intermediate_size}, cross-attention every "
        f"{args.cross_attention_freq} layers, {args.num_queries} queries; image features "
        f"({args.batch_size}, {args.image_tokens}, {args.encoder_width}); text length {args.text_length}"
    )
    print(
        f"  dropout {args.dropout} (attention {args.attention_dropout}), train mode on both sides; "
        "weights normal(0, 0.02), copied from ours to the reference"
    )
    for part in args.parts:
        if part == "stage1":
            compare_stage1(args)
        else:
            compare_qformer(args, text=part == "qformer-text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
