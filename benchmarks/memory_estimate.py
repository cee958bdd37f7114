"""Estimate the per-device training memory of the BLIP-2 recipes from a fake-tensor trace (no GPU).

Prints the parameter counts of every part against their known sizes, then a markdown table per
recipe: trainable and frozen parameters, weights + gradients + AdamW states, activations saved for
backward at the recipe's batch, the estimated peak per device, the same with Q-Former gradient
checkpointing, and the largest per-device batch that fits a 24 GiB and an 80 GiB card.

Method (estimates from a trace, not measurements on a GPU):

- Models. Each recipe's model is built at full size on the ``meta`` device from the recipe's own
  config: ``Blip2ForPretraining`` for stage 1 (what ``QFormerStage1`` trains) and
  ``Blip2ForGeneration`` for stage 2. The real LLM weights are not on this machine, so this script
  monkeypatches ``blip2_llm._load_llm`` to build the LLM with ``from_config`` from a hand-written
  transformers config of the real model (:data:`LLMS`) and to return an offline word-level
  tokenizer (``small_llm``); everything else is the library's code. The frozen ViT and LLM are cast
  on ``meta`` to the dtype their ``_apply`` gives them on a GPU (``frozen_vision_dtype``,
  ``llm_dtype``). The model is then materialised with ``to_empty`` as FakeTensors on a pretend CUDA
  device: meta tensors (shape, dtype, no storage) that CUDA autocast applies to. Autocast ignores
  plain meta tensors, so a meta trace would see fp32 activations where a GPU has bf16 ones.
- Static memory. Trainable parameters: fp32 weights 4 B + gradients 4 B + AdamW states 8 B. Frozen
  parameters: their GPU dtype, 2 B (fp16 / bf16).
- Activations (:func:`saved_bytes`). One training forward (the task's ``training_step`` call of the
  model, dropout on) under bf16 autocast (the recipes' ``bf16-mixed``) inside
  ``torch.autograd.graph.saved_tensors_hooks`` that sum the bytes of every storage saved for
  backward, each storage once, parameters excluded. It runs at batches 2 and 4; the line through the
  two gives a per-sample part and a batch-independent part (autocast's bf16 copies of the weights),
  and is evaluated at the recipe's batch. Every text is padded to its maximum length (32 tokens;
  with ~100 captions per device the longest one sets the padded length); for FlanT5 both the
  encoder prefix and the decoder suffix are 32 tokens. Two things a fake device does not do like a
  GPU are set right in the trace: ``F.scaled_dot_product_attention`` is routed to the fused
  memory-efficient kernel (the fake device would take the math path and save every attention
  matrix), and boolean-mask indexing (the scored tokens: a data-dependent shape) is traced as if
  every position were selected (exact for stage 1; one token too many per row for OPT, whose BOS is
  not scored). The hard-negative sampler is replaced by fixed indices of the same shapes.
- The frozen ViT runs under ``no_grad``, so it saves nothing; its peak of live bytes over one
  forward (:func:`peak_live_bytes`, fitted the same way) is added. This is conservative: the ViT
  runs before the Q-Former saves anything.
- Peak per device = (static + activations + ViT transient) x 1.10, the 10% standing for allocator
  fragmentation, cuBLAS/cuDNN workspaces and the loss-gradient transients at the start of backward.
  Not included: the CUDA context (~0.3-0.5 GiB outside PyTorch's allocator), DDP's gradient buckets
  (+4 B per trainable parameter unless ``gradient_as_bucket_view``), and, with more than one GPU,
  tensors gathered from the other ranks (the trace is one rank).
- Gradient checkpointing: the same trace with ``qformer.grad_checkpointing`` on (each Q-Former layer
  saves only its inputs and is recomputed in backward).

Usage::

    python benchmarks/memory_estimate.py                         # the four BLIP-2 recipes, ~1-2 min
    python benchmarks/memory_estimate.py --recipes blip2_stage2_opt --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
)

from lightning_blip.losses.itm import NegativeSampler
from lightning_blip.models.blip2 import (
    Blip2Config,
    Blip2ForGeneration,
    Blip2ForPretraining,
    Blip2LLMConfig,
    QFormer,
)
from lightning_blip.models.blip2 import llm as blip2_llm
from lightning_blip.models.blip2.model import FrozenAwareImageEncoder
from lightning_blip.models.blip2.small_llm import DEFAULT_TEXTS, tokenizer_for, train_word_tokenizer

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPES = ("blip2_stage1", "blip2_stage1_vitl", "blip2_stage2_opt", "blip2_stage2_flant5")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRACE_BATCHES = (2, 4)
CARDS_GIB = (24, 80)
ALLOWANCE = 1.10
TRAINABLE_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW exp_avg + exp_avg_sq
GIB = 2**30


@dataclass(frozen=True)
class LLMSpec:
    """A real LLM's architecture (built with ``from_config``) and its published size."""

    name: str
    config: PretrainedConfig
    tokenizer_kind: str  # small_llm.tokenizer_for: which special tokens the real tokenizer adds
    untie_lm_head: bool  # transformers 5 ties T5's lm_head in from_config; FlanT5's checkpoint does not
    reference_params: float


LLMS = {
    "facebook/opt-2.7b": LLMSpec(
        "OPT-2.7B",
        OPTConfig(
            hidden_size=2560,
            num_hidden_layers=32,
            ffn_dim=10240,
            num_attention_heads=32,
            vocab_size=50272,
            max_position_embeddings=2048,
            word_embed_proj_dim=2560,
        ),
        "opt",
        False,
        2.7e9,
    ),
    "google/flan-t5-xl": LLMSpec(
        "FlanT5-XL",
        T5Config(
            d_model=2048,
            d_ff=5120,
            d_kv=64,
            num_heads=32,
            num_layers=24,
            num_decoder_layers=24,
            vocab_size=32128,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=0,  # as in the real config (from_config leaves it unset otherwise)
        ),
        "t5",
        True,
        2.85e9,
    ),
}

# published sizes of the full-depth ViTs (the recipes drop the last block) and of the Q-Former side
VISION_REFERENCE = {
    "eva_giant_patch14_224": ("EVA-CLIP ViT-g/14", 1.0e9),
    "vit_large_patch14_clip_224": ("CLIP ViT-L/14", 0.304e9),
}
QFORMER_REFERENCE = {1: ("paper, ViT-g", 188e6), 2: ("LAVIS, ViT-g", 107e6)}


class Line(NamedTuple):
    """Bytes as ``fixed + per_sample * batch``."""

    fixed: float
    per_sample: float

    def at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch


def fit_line(measure: Callable[[int], int], batches: tuple[int, int] = TRACE_BATCHES) -> Line:
    """The line through ``measure(b)`` at two batch sizes."""
    (b0, b1), (y0, y1) = batches, [measure(b) for b in batches]
    per_sample = (y1 - y0) / (b1 - b0)
    return Line(y0 - per_sample * b0, per_sample)


def storage_key(t: Tensor) -> int:
    """Identity of the storage behind ``t`` (views share it)."""
    return t.untyped_storage()._cdata


def saved_bytes(step: Callable[[], object], exclude: set[int]) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``step()`` runs.

    Storages in ``exclude`` (the parameters') are not counted. The saved tensors are held until the
    end, so no storage is freed and its identity reused by another during the step.
    """
    saved: dict[int, Tensor] = {}

    def pack(t: Tensor) -> Tensor:
        key = storage_key(t)
        if key not in exclude:
            saved.setdefault(key, t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(t.untyped_storage().nbytes() for t in saved.values())


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created by ops under this mode and still referenced, each once."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: Counter[int] = Counter()
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliases = any(r.alias_info is not None for r in func._schema.returns)
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            key = storage_key(t)
            if key not in self.sizes:
                if aliases:  # a view of a tensor made outside the mode (a weight, the input)
                    continue
                self.sizes[key] = t.untyped_storage().nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= self.sizes.pop(key)


def peak_live_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes alive at once among the tensors ``fn()`` creates (its inputs and weights excluded)."""
    with LiveBytes() as tracker:
        fn()
    return tracker.peak


class AllTrueMasks(TorchDispatchMode):
    """Boolean-mask indexing, whose shape depends on data, traced as if every element were True."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index.Tensor:
            source, indices = args
            flat: list[Tensor | None] = []
            for index in indices:
                if index is not None and index.dtype == torch.bool:
                    rows = torch.zeros(index.numel(), dtype=torch.long, device=index.device)
                    flat += [rows] * index.dim()
                else:
                    flat.append(index)
            return func(source, flat)
        return func(*args, **(kwargs or {}))


def fused_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` through the memory-efficient kernel, as a GPU runs it.

    A boolean mask becomes an additive bias in the query's dtype, as SDPA does (and autocast casts
    a float mask to it). No ``enable_gqa``: the models traced here do not use grouped queries.
    """
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~attn_mask, float("-inf"))
        else:
            bias = attn_mask.to(query.dtype)
        bias = bias.expand(*query.shape[:-1], key.shape[-2])
    grad = torch.is_grad_enabled()
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, grad, dropout_p, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype) -> Iterator[None]:
    """CUDA autocast without a GPU (``torch.autocast("cuda")`` disables itself when none is found)."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)


@contextlib.contextmanager
def gpu_trace(fake_mode: FakeTensorMode, dtype: torch.dtype) -> Iterator[None]:
    """Fake CUDA tensors, autocast to ``dtype``, fused attention and all-True boolean masks."""
    with (
        fake_mode,
        AllTrueMasks(),
        mock.patch.object(F, "scaled_dot_product_attention", fused_sdpa),
        cuda_autocast(dtype),
    ):
        yield


class FixedNegatives(NegativeSampler):
    """ITM negatives at fixed indices: the same shapes as sampled ones, without data-dependent ops."""

    def __call__(self, sim_i2t: Tensor, sim_t2i: Tensor, positive_mask: Tensor) -> tuple[Tensor, Tensor]:
        index = torch.zeros(sim_i2t.shape[0], dtype=torch.long, device=sim_i2t.device)
        return index, index


def meta_llm(config: Blip2LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Stands in for ``blip2_llm._load_llm``: the real LLM's architecture and a word-level tokenizer."""
    spec = LLMS[config.llm]
    seq2seq = spec.config.is_encoder_decoder
    llm = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(spec.config)
    if spec.untie_lm_head:
        llm.lm_head.weight = nn.Parameter(torch.empty_like(llm.lm_head.weight))
    return llm, tokenizer_for(spec.tokenizer_kind, train_word_tokenizer(DEFAULT_TEXTS)), seq2seq


@dataclass
class Recipe:
    """What this script reads from a recipe YAML."""

    name: str
    stage: int
    config: Blip2Config | Blip2LLMConfig
    task_args: dict
    batch_size: int
    text_length: int
    autocast: torch.dtype


def load_recipe(name: str) -> Recipe:
    """Read ``recipes/<name>.yaml``, or the file ``name`` ending in ``.yaml`` (interpolations resolved)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else RECIPE_DIR / f"{name}.yaml"
    name = path.stem
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    model, data = values["model"], values["data"]["init_args"]
    args = dict(model["init_args"])
    precision = values["trainer"]["precision"]
    if precision not in AUTOCAST:
        raise ValueError(f"{name}: precision {precision!r} is not one of {sorted(AUTOCAST)}")
    stage = 1 if model["class_path"].endswith("QFormerStage1") else 2
    if stage == 1:
        config = Blip2Config.from_dict(args["config"])
        task_args = {k: args[k] for k in ("gather_with_grad", "positives", "itg_cache")}
        text_length = data["max_length"]
    else:
        config = Blip2LLMConfig.from_dict(args["config"])
        if config.llm not in LLMS:
            raise ValueError(f"{name}: no architecture for llm={config.llm!r}; add its config to LLMS")
        task_args, text_length = {}, config.max_text_length
    return Recipe(name, stage, config, task_args, data["batch_size"], text_length, AUTOCAST[precision])


def build_meta(recipe: Recipe) -> nn.Module:
    """The recipe's model on ``meta``, its frozen parts in the dtype their ``_apply`` gives them on a GPU."""
    with torch.device("meta"), mock.patch.object(blip2_llm, "_load_llm", meta_llm):
        if recipe.stage == 1:
            model = Blip2ForPretraining(recipe.config, **recipe.task_args)
        else:
            model = Blip2ForGeneration(recipe.config)
            model.llm.to(model.llm_dtype)
    encoder = image_encoder(model)
    if encoder.frozen:
        encoder.visual_encoder.to(encoder.frozen_dtype)
    return model


def image_encoder(model: nn.Module) -> FrozenAwareImageEncoder:
    return next(m for m in model.modules() if isinstance(m, FrozenAwareImageEncoder))


def set_grad_checkpointing(model: nn.Module, on: bool) -> None:
    qformer = next(m for m in model.modules() if isinstance(m, QFormer))
    qformer.config = replace(qformer.config, grad_checkpointing=on)


def training_forward(model: nn.Module, recipe: Recipe, batch: int) -> None:
    """The forward of one training step, as ``QFormerStage1`` / ``QFormerStage2`` call the model.

    An encoder-decoder LLM gets (input, output) pairs instead of a random split of each caption, so
    that both sides have their maximum length.
    """
    size = recipe.config.vision.image_size
    pixels = torch.empty(batch, 3, size, size, device="cuda")
    if recipe.stage == 1:
        ids = torch.zeros(batch, recipe.text_length, dtype=torch.long, device="cuda")
        mask = torch.ones_like(ids)
        model(pixels, ids, mask, negative_sampler=FixedNegatives(pool="global"))
        return
    caption = " ".join(["dog"] * (recipe.text_length + 8))  # one token per word, cut at max_text_length
    captions = [caption] * batch
    model(pixels, captions, captions if model.is_encoder_decoder else None, reduction="sum")


class Check(NamedTuple):
    """A parameter count of ours next to the published one (``reference`` None: not known here)."""

    part: str
    ours: str
    reference: float | None
    source: str
    compared: int  # the count compared with the reference (a ViT at full depth)


def parameter_checks(model: nn.Module, recipe: Recipe) -> list[Check]:
    """The ViT (also at full depth), the LLM and the trainable Q-Former side against known sizes."""
    vision = recipe.config.vision
    vit = image_encoder(model).visual_encoder.vit
    depth, removed = len(vit.blocks), vision.num_removed_blocks
    ours = numel(vit.parameters())
    full = ours + removed * numel(vit.blocks[-1].parameters())
    label, reference = VISION_REFERENCE.get(vision.model_name, (vision.model_name, None))
    checks = [
        Check(
            f"{label}, {depth} of {depth + removed} blocks",
            f"{millions(ours)} ({depth + removed} blocks: {millions(full)})",
            reference,
            f"{depth + removed} blocks",
            full,
        )
    ]
    if recipe.stage == 2:
        spec = LLMS[recipe.config.llm]
        ours = numel(model.llm.parameters())
        checks.append(Check(spec.name, millions(ours), spec.reference_params, "", ours))
    source, reference = QFORMER_REFERENCE[recipe.stage]
    trainable = numel(p for p in model.parameters() if p.requires_grad)
    checks.append(
        Check(
            f"trainable, stage {recipe.stage} ({recipe.name})",
            millions(trainable),
            reference,
            source,
            trainable,
        )
    )
    return checks


@dataclass
class Estimate:
    """Parameter counts and memory (bytes) of one recipe at ``batch``."""

    recipe: Recipe
    batch: int
    trainable: int
    frozen: int
    static: float
    activations: Line
    activations_ckpt: Line
    vit_transient: Line
    checks: list[Check]

    def peak(self, checkpointing: bool = False) -> float:
        acts = self.activations_ckpt if checkpointing else self.activations
        return (self.static + acts.at(self.batch) + self.vit_transient.at(self.batch)) * ALLOWANCE

    def max_batch(self, card_gib: float, checkpointing: bool = False) -> int:
        """The largest batch whose estimated peak fits ``card_gib``."""
        acts = self.activations_ckpt if checkpointing else self.activations
        room = card_gib * GIB / ALLOWANCE - self.static - acts.fixed - self.vit_transient.fixed
        return max(0, math.floor(room / (acts.per_sample + self.vit_transient.per_sample)))


def estimate(recipe: Recipe, batch: int) -> Estimate:
    """Count the recipe's parameters and trace its activations; memory at ``batch``."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = build_meta(recipe)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = numel(p for p in model.parameters() if p.requires_grad)
    checks = parameter_checks(model, recipe)
    with fake_mode:
        model.to_empty(device="cuda")
    model.train()
    exclude = {storage_key(t) for t in (*model.parameters(), *model.buffers())}

    def activations(checkpointing: bool) -> Line:
        set_grad_checkpointing(model, checkpointing)

        def measure(b: int) -> int:
            with gpu_trace(fake_mode, recipe.autocast):
                return saved_bytes(lambda: training_forward(model, recipe, b), exclude)

        return fit_line(measure)

    vit = image_encoder(model).visual_encoder
    size = recipe.config.vision.image_size

    def vit_peak(b: int) -> int:
        with gpu_trace(fake_mode, recipe.autocast), torch.no_grad():
            pixels = torch.empty(b, 3, size, size, device="cuda", dtype=next(vit.parameters()).dtype)
            return peak_live_bytes(lambda: vit(pixels))

    return Estimate(
        recipe=recipe,
        batch=batch,
        trainable=trainable,
        frozen=numel(frozen),
        static=trainable * TRAINABLE_BYTES + sum(p.numel() * p.element_size() for p in frozen),
        activations=activations(False),
        activations_ckpt=activations(True),
        vit_transient=fit_line(vit_peak),
        checks=checks,
    )


def numel(params: Iterable[Tensor]) -> int:
    return sum(p.numel() for p in params)


def millions(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def checks_table(estimates: list[Estimate]) -> str:
    """Markdown table of the parameter checks, each part once."""
    rows = ["| part | ours | reference | ours / reference |", "|---|---|---|---|"]
    seen = set()
    for check in (c for e in estimates for c in e.checks):
        if check.part not in seen:
            seen.add(check.part)
            if check.reference is None:
                rows.append(f"| {check.part} | {check.ours} | ? | |")
                continue
            source = f" ({check.source})" if check.source else ""
            ratio = check.compared / check.reference
            rows.append(
                f"| {check.part} | {check.ours} | {millions(check.reference)}{source} | {ratio:.3f} |"
            )
    return "\n".join(rows)


def memory_table(estimates: list[Estimate]) -> str:
    """Markdown table of the memory estimates (GiB)."""
    cards = " | ".join(f"max batch, {c} GiB card" for c in CARDS_GIB)
    rows = [
        "| recipe | batch | trainable params | frozen params | weights + grads + AdamW (GiB) "
        "| activations (GiB) | est. peak (GiB) | est. peak, Q-Former grad ckpt (GiB) | " + cards + " |",
        "|---" * (8 + len(CARDS_GIB)) + "|",
    ]
    for e in estimates:
        fits = " | ".join(f"{e.max_batch(c)} (ckpt {e.max_batch(c, True)})" for c in CARDS_GIB)
        rows.append(
            f"| `{e.recipe.name}` | {e.batch} | {millions(e.trainable)} | {millions(e.frozen)} "
            f"| {gib(e.static)} | {gib(e.activations.at(e.batch))} | {gib(e.peak())} "
            f"| {gib(e.peak(True))} | {fits} |"
        )
    return "\n".join(rows)


def details(e: Estimate) -> str:
    """One line of the fitted parts of a recipe's estimate (MiB)."""

    def mib(line: Line) -> str:
        return f"{line.fixed / 2**20:,.0f} MiB + {line.per_sample / 2**20:,.1f} MiB/sample"

    return (
        f"- `{e.recipe.name}`: activations {mib(e.activations)}; with Q-Former grad checkpointing "
        f"{mib(e.activations_ckpt)}; frozen ViT forward transient {mib(e.vit_transient)}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--recipes",
        nargs="+",
        default=list(DEFAULT_RECIPES),
        help="names in recipes/ (no .yaml) or paths of recipe YAML files",
    )
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch instead of the recipes'")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    estimates = []
    for name in args.recipes:
        recipe = load_recipe(name)
        estimates.append(estimate(recipe, args.batch_size or recipe.batch_size))
        print(f"traced {name} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print("Parameter counts (models built on the meta device)\n")
    print(checks_table(estimates))
    print(
        "\nEstimated training memory per device (each recipe's mixed precision, AdamW; GiB = 2^30 "
        f"bytes; est. peak includes {ALLOWANCE - 1:.0%} for fragmentation and workspaces)\n"
    )
    print(memory_table(estimates))
    print("\nFitted from the trace at batches " + " and ".join(map(str, TRACE_BATCHES)) + ":\n")
    print("\n".join(details(e) for e in estimates))


if __name__ == "__main__":
    main()
