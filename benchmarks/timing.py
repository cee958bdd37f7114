"""What every benchmark script shares: benchmark hygiene (threads, denormals flushed, std-0.02 weights),
timing flags, interleaved timing and its ratios, FLOP counts, a random BLIP-shaped batch.

The scripts import from here (they run from ``benchmarks/``, which Python puts on the path).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn

CLS_ID, SEP_ID, PAD_ID, DEC_ID, ENC_ID = 101, 102, 0, 30522, 30523
"""The BLIP tokenizer's [CLS], [SEP], [PAD], [DEC] and [ENC] ids."""


def add_timing_arguments(
    p: argparse.ArgumentParser, warmup: int, repeats: int, profile_rows: int | None = None
) -> None:
    """``--threads``, ``--warmup``, ``--repeats``, ``--seed``; ``--profile`` and ``--profile-rows`` too
    when ``profile_rows`` is given."""
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls per side before timing")
    p.add_argument("--repeats", type=int, default=repeats, help="timed calls per side, interleaved")
    p.add_argument("--seed", type=int, default=0)
    if profile_rows is not None:
        p.add_argument("--profile", action="store_true", help="after timing, profile one call of each side")
        p.add_argument("--profile-rows", type=int, default=profile_rows)


def fill_from_preset(args: argparse.Namespace, presets: dict[str, dict]) -> None:
    """Size flags left unset take the value of ``args.preset`` in ``presets``."""
    for name, value in presets[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


POSITION_PARAMS = ("position_embedding", "class_embedding", "pos_embed", "cls_token")


@torch.no_grad()
def reinit_(module: nn.Module, std: float = 0.02) -> None:
    """normal(0, std) weights, zero biases, unit LayerNorms; position/class embeddings normal(0, std).

    Applied identically to both sides so that no side computes with denormal numbers.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] in POSITION_PARAMS:
            nn.init.normal_(p, std=std)


def count(params) -> int:
    """Number of elements of unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def make_batch(args) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    B, L = args.batch_size, args.text_length
    pixel_values = torch.randn(B, 3, args.image_size, args.image_size, generator=g)
    input_ids = torch.randint(1000, 30000, (B, L), generator=g)
    lengths = torch.randint(max(3, int(0.6 * L)), L + 1, (B,), generator=g)
    lengths[0] = L  # at least one full row, so the padded length is L
    positions = torch.arange(L)[None, :]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids[:, 0] = CLS_ID
    input_ids[torch.arange(B), lengths - 1] = SEP_ID
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
    return pixel_values, input_ids, attention_mask


def prepare_torch(args: argparse.Namespace) -> bool:
    """Benchmark hygiene: ``args.threads`` threads, denormals flushed, ``args.seed``; transformers'
    logging and progress bars quiet. Returns whether denormals are flushed (the CPU may not allow it)."""
    import transformers

    torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return flush


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile(name: str, fn, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {name} (one step, top {rows} ops by self CPU time) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


def count_flops(fn) -> float:
    """Matmul/conv/attention FLOPs of one call of ``fn`` (torch's FlopCounterMode).

    torch's counter has no formula for the CPU flash-attention kernel that SDPA (ours, timm's ViT)
    dispatches to, so the standard SDPA formulas are registered for it here.
    """
    from torch.utils import flop_counter as fcm

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: (
            lambda q, k, v, *a, out_shape=None, **kw: fcm.sdpa_flop_count(q, k, v)
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            lambda g, q, k, v, *a, out_shape=None, **kw: fcm.sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    counter = fcm.FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return float(counter.get_total_flops())


def fmt_m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def interleaved(
    steps: dict[Hashable, Callable[[], object]], args: argparse.Namespace
) -> dict[Hashable, list[float]]:
    """Warm-up, then ``--repeats`` rounds over ``steps``, the order reversed every other round."""
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[Hashable, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name]))
    return times


def report(times: dict[str, list[float]], args: argparse.Namespace) -> dict[str, float]:
    """Print median / min / max per side (and a warning for noisy sides); return the medians."""
    print(f"  seconds per step ({args.repeats} interleaved repeats after {args.warmup} warm-up steps each):")
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts)
        print(f"    {name:<22} median {medians[name]:.4f}  min {min(ts):.4f}  max {max(ts):.4f}")
    noisy = [name for name, ts in times.items() if max(ts) > 1.5 * min(ts)]
    if noisy:
        print(
            f"  warning: {', '.join(noisy)} varied by more than 1.5x between repeats: the machine was busy; "
            "rerun or raise --repeats"
        )
    return medians


def ratios(times: dict[str, list[float]], slower: str, faster: str) -> str:
    """``slower / faster`` as ratios of medians and of minimums, and the median of per-round ratios.

    The per-round ratio pairs the two steps run next to each other, so it is the least affected by
    load from other processes that comes and goes.
    """
    a, b = times[slower], times[faster]
    paired = statistics.median(x / y for x, y in zip(a, b))
    return (
        f"{statistics.median(a) / statistics.median(b):.2f}x of medians, {min(a) / min(b):.2f}x of "
        f"minimums, {paired:.2f}x median of per-round ratios"
    )
