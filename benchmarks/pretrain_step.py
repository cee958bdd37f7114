"""Time one BLIP pretraining step: lightning_blip versus the equivalent transformers classes.

One step = online ViT forward, ITC (unimodal text pass + momentum-distilled contrastive loss),
ITM on B positives + 2B hard negatives, LM with label smoothing 0.1, backward of the summed loss,
the no-grad momentum forward (ViT + unimodal text encoder) and the EMA update of the momentum
copies. Both sides run in fp32 on CPU, on the same batch, with the same sizes, interleaved.

Ours:       ``lightning_blip.models.blip.pretraining.BlipForPretraining``.
Reference:  transformers' ``BlipForImageTextRetrieval`` (ITC through ``use_itm_head=False``, ITM
            through its ``text_encoder`` + ``itm_head`` on the image tokens it returned) and
            ``BlipForConditionalGeneration`` (LM with labels), plus a frozen deep copy of the
            retrieval model's vision model, text encoder and projections as momentum encoders. The
            two transformers models each run their own ViT (a user of those classes has no other
            way to train ITC/ITM and LM together), so the reference runs two online ViT forwards.

Usage::

    python benchmarks/pretrain_step.py                    # tiny BLIP-shaped config, ~1 min on 2 cores
    python benchmarks/pretrain_step.py --threads 4 --repeats 9
    python benchmarks/pretrain_step.py --preset base      # ViT-B/16 + BERT-base: slow on CPU
    python benchmarks/pretrain_step.py --profile          # also print the top ops of each side

Benchmark hygiene (see the project's engineering notes): every Linear/Embedding/Conv weight of
both sides is re-initialised with normal(0, 0.02) (transformers' vision configs initialise at
~1e-10, whose gradients are denormal and ~10x slower on CPU), ``torch.set_flush_denormal(True)``,
a fixed thread count, warm-up steps, then interleaved repeats reported as median / min / max.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timing import (
    DEC_ID,
    ENC_ID,
    PAD_ID,
    SEP_ID,
    add_timing_arguments,
    count,
    count_flops,
    fill_from_preset,
    fmt_m,
    make_batch,
    prepare_torch,
    profile,
    reinit_,
    timed,
)
from torch import Tensor, nn

PRESETS = {
    # BLIP-shaped (224 px, patch 16, head dim 64, FFN 4x, ViT and text of equal width and depth, as
    # ViT-B + BERT-base) but small: a step of either side takes about 1.5-2.5 s on 2 CPU cores.
    "tiny": {
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 256,
        "vision_depth": 6,
        "vision_heads": 4,
        "vision_ffn": 1024,
        "text_width": 256,
        "text_layers": 6,
        "text_heads": 4,
        "text_ffn": 1024,
    },
    # The real BLIP ViT-B/16 + BERT-base sizes (slow on CPU: tens of seconds per step per side).
    "base": {
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 768,
        "vision_depth": 12,
        "vision_heads": 12,
        "vision_ffn": 3072,
        "text_width": 768,
        "text_layers": 12,
        "text_heads": 12,
        "text_ffn": 3072,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="size preset; 'base' = ViT-B/16 + BERT-base (slow on CPU). Size flags override it.",
    )
    for name in PRESETS["tiny"]:
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}"
        )
    p.add_argument("--vocab-size", type=int, default=30524)
    p.add_argument("--embed-dim", type=int, default=256, help="ITC projection width")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--text-length", type=int, default=30, help="padded text length (rows get 60-100%% of it)")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="text hidden and attention dropout on both sides (BLIP/BERT: 0.1)",
    )
    p.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="text attention-probability dropout on both sides (default: --dropout). On CPU any "
        "value > 0 sends our SDPA calls to the unfused math kernel",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=None,
        help="our ITC queue length (default: the batch size, i.e. nearly queue-free like the reference)",
    )
    p.add_argument("--alpha", type=float, default=0.4, help="momentum distillation weight")
    p.add_argument("--momentum", type=float, default=0.995)
    add_timing_arguments(p, warmup=2, repeats=7, profile_rows=25)
    p.add_argument(
        "--phases",
        action="store_true",
        help="after timing, print a per-phase breakdown (median of --repeats) of each side",
    )
    args = p.parse_args(argv)
    fill_from_preset(args, PRESETS)
    if args.attention_dropout is None:
        args.attention_dropout = args.dropout
    if args.queue_size is None:
        args.queue_size = args.batch_size
    return args


# ------------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------------
def build_ours(args) -> nn.Module:
    from lightning_blip.models.blip import BlipConfig, BlipForPretraining, MEDConfig
    from lightning_blip.models.shared.vision import VisionConfig

    vision = VisionConfig(
        model_name="vit_base_patch16_224",
        image_size=args.image_size,
        timm_kwargs={
            "embed_dim": args.vision_width,
            "depth": args.vision_depth,
            "num_heads": args.vision_heads,
            "patch_size": args.patch_size,
            "mlp_ratio": args.vision_ffn / args.vision_width,
        },
    )
    text = MEDConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.text_width,
        num_layers=args.text_layers,
        num_heads=args.text_heads,
        intermediate_size=args.text_ffn,
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
    )
    model = BlipForPretraining(
        BlipConfig(vision=vision, text=text, embed_dim=args.embed_dim), queue_size=args.queue_size
    )
    reinit_(model.blip)
    model.copy_to_momentum()
    return model.train()


def ours_step(model, pixel_values, input_ids, attention_mask, args) -> Tensor:
    out = model(pixel_values, input_ids, attention_mask, alpha=args.alpha)
    loss = out.loss_itc + out.loss_itm + out.loss_lm
    loss.backward()
    model.momentum_update(args.momentum)
    return loss.detach()


def ours_params(model) -> tuple[int, int]:
    momentum = [p for m in model.momentum_modules().values() for p in m.parameters()]
    return count(model.blip.parameters()), count(momentum)


# ------------------------------------------------------------------------------------------------
# reference (transformers)
# ------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    retrieval: nn.Module  # BlipForImageTextRetrieval: ViT, text encoder (SA + CA), projections, ITM head
    captioning: nn.Module  # BlipForConditionalGeneration: its own ViT and the text decoder + LM head
    momentum: nn.ModuleDict  # frozen deep copy of the retrieval model's ViT, text encoder, projections
    temp: nn.Parameter  # learnable ITC temperature (the transformers classes have none)

    def pairs(self) -> list[tuple[Tensor, Tensor]]:
        online = {name: getattr(self.retrieval, name) for name in self.momentum}
        out = []
        for name, module_m in self.momentum.items():
            online_params = dict(online[name].named_parameters())
            out += [(online_params[n], p) for n, p in module_m.named_parameters()]
        return out

    def zero_grad(self) -> None:
        self.retrieval.zero_grad(set_to_none=True)
        self.captioning.zero_grad(set_to_none=True)
        self.temp.grad = None


def transformers_configs(args):
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(
        hidden_size=args.vision_width,
        intermediate_size=args.vision_ffn,
        num_hidden_layers=args.vision_depth,
        num_attention_heads=args.vision_heads,
        image_size=args.image_size,
        patch_size=args.patch_size,
    )
    text = BlipTextConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.text_width,
        intermediate_size=args.text_ffn,
        num_hidden_layers=args.text_layers,
        num_attention_heads=args.text_heads,
        encoder_hidden_size=args.vision_width,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.attention_dropout,
        label_smoothing=0.1,
        bos_token_id=DEC_ID,
        pad_token_id=PAD_ID,
        sep_token_id=SEP_ID,
    )
    return BlipConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_text_hidden_size=args.embed_dim,
        label_smoothing=0.1,
    )


def check_sdpa(config) -> str:
    """What transformers says when asked for SDPA attention in its BLIP classes."""
    from transformers import BlipForImageTextRetrieval

    try:
        BlipForImageTextRetrieval._from_config(config, attn_implementation="sdpa")
    except (ValueError, NotImplementedError) as e:
        return f'attn_implementation="sdpa" raises {type(e).__name__}: {str(e).split(". ")[0]}'
    return 'attn_implementation="sdpa" was accepted (this benchmark still uses the default)'


def build_reference(args) -> tuple[Reference, str, str]:
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    config = transformers_configs(args)
    retrieval = BlipForImageTextRetrieval(config)
    captioning = BlipForConditionalGeneration(config)
    for model in (retrieval, captioning):
        reinit_(model)
        model.train()
    # the LM head's decoder is tied to the word embeddings, as in ours
    tied = (
        captioning.text_decoder.cls.predictions.decoder.weight
        is captioning.text_decoder.get_input_embeddings().weight
    )
    names = ("vision_model", "text_encoder", "vision_proj", "text_proj")
    momentum = nn.ModuleDict({name: copy.deepcopy(getattr(retrieval, name)) for name in names}).train()
    momentum.requires_grad_(False)
    attn = retrieval.config._attn_implementation or "eager"
    ref = Reference(retrieval, captioning, momentum, nn.Parameter(torch.tensor(0.07)))
    return ref, f"{attn} (LM head tied to word embeddings: {tied})", check_sdpa(config)


def in_batch_itc(
    image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha
) -> tuple[Tensor, Tensor, Tensor]:
    """Queue-free ITC with momentum distillation: keys are the batch's momentum features."""
    sim_i2t = image_feat @ text_feat_m.t() / temp
    sim_t2i = text_feat @ image_feat_m.t() / temp
    with torch.no_grad():
        eye = torch.eye(sim_i2t.shape[0])
        t_i2t = alpha * F.softmax(image_feat_m @ text_feat_m.t() / temp, dim=1) + (1 - alpha) * eye
        t_t2i = alpha * F.softmax(text_feat_m @ image_feat_m.t() / temp, dim=1) + (1 - alpha) * eye
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * t_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * t_t2i).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2, sim_i2t.detach(), sim_t2i.detach()


def sample_negatives(sim: Tensor) -> Tensor:
    """BLIP pretraining's rule: softmax(sim) + 1e-4, own pair zeroed, one multinomial draw per row."""
    weights = F.softmax(sim, dim=1) + 1e-4
    weights.fill_diagonal_(0)
    return torch.multinomial(weights, 1).squeeze(1)


def reference_step(ref: Reference, pixel_values, input_ids, attention_mask, args) -> Tensor:
    retrieval, B = ref.retrieval, input_ids.shape[0]
    temp = ref.temp.clamp(0.001, 0.5)

    # ITC: the retrieval model's forward with use_itm_head=False runs its ViT and the unimodal text
    # encoder; the features are re-projected from the tokens it returns (its output is only the
    # online-online similarity, and ITC needs online-vs-momentum similarities).
    out = retrieval(
        input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, use_itm_head=False
    )
    image_embeds = out.last_hidden_state
    image_feat = F.normalize(retrieval.vision_proj(image_embeds[:, 0]), dim=-1)
    text_feat = F.normalize(retrieval.text_proj(out.question_embeds[:, 0]), dim=-1)

    with torch.no_grad():  # momentum encoders
        m = ref.momentum
        image_embeds_m = m["vision_model"](pixel_values=pixel_values).last_hidden_state
        image_feat_m = F.normalize(m["vision_proj"](image_embeds_m[:, 0]), dim=-1)
        text_hidden_m = m["text_encoder"](
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        text_feat_m = F.normalize(m["text_proj"](text_hidden_m[:, 0]), dim=-1)
    loss_itc, sim_i2t, sim_t2i = in_batch_itc(
        image_feat, text_feat, image_feat_m, text_feat_m, temp, args.alpha
    )

    # ITM on B positives + 2B hard negatives. use_itm_head=True would re-run the ViT on 3B images,
    # so the same code path (text_encoder with cross-attention + itm_head) is called on the image
    # tokens above; the cross-attention keys/values are projected for all 3B rows in every layer.
    with torch.no_grad():
        neg_text, neg_image = sample_negatives(sim_i2t), sample_negatives(sim_t2i)
    itm_image = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
    itm_ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
    itm_ids[:, 0] = ENC_ID
    itm_mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
    image_atts = torch.ones(itm_image.shape[:-1], dtype=torch.long)
    hidden = retrieval.text_encoder(
        input_ids=itm_ids,
        attention_mask=itm_mask,
        encoder_hidden_states=itm_image,
        encoder_attention_mask=image_atts,
    ).last_hidden_state
    itm_labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)])
    loss_itm = F.cross_entropy(retrieval.itm_head(hidden[:, 0]), itm_labels)

    # LM: the captioning model runs its own ViT, then the decoder (label smoothing 0.1 from its config)
    dec_ids = input_ids.clone()
    dec_ids[:, 0] = DEC_ID
    labels = dec_ids.masked_fill(attention_mask == 0, -100)
    loss_lm = ref.captioning(
        pixel_values=pixel_values, input_ids=dec_ids, attention_mask=attention_mask, labels=labels
    ).loss

    loss = loss_itc + loss_itm + loss_lm
    loss.backward()
    with torch.no_grad():
        ref.temp.clamp_(0.001, 0.5)
        for online, param_m in ref.pairs():
            param_m.lerp_(online.detach(), 1.0 - args.momentum)
    return loss.detach()


def reference_params(ref: Reference) -> tuple[int, int, int, int]:
    retrieval = count(ref.retrieval.parameters())
    captioning = count(ref.captioning.parameters())
    return retrieval, captioning, retrieval + captioning + 1, count(ref.momentum.parameters())


# ------------------------------------------------------------------------------------------------
# per-phase breakdown (diagnostic): the same step split into timed phases
# ------------------------------------------------------------------------------------------------
class PhaseClock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def tick(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


def ours_phases(model, pixel_values, input_ids, attention_mask, args) -> dict[str, float]:
    """Our step, phase by phase, through the public pieces ``BlipForPretraining.forward`` uses."""
    from lightning_blip.losses.itc import itc_loss, itc_targets
    from lightning_blip.losses.itm import NegativeSampler, itm_loss
    from lightning_blip.losses.lm import lm_labels, lm_loss
    from lightning_blip.models.blip.pretraining import concat_kv

    blip, B = model.blip, input_ids.shape[0]
    clock = PhaseClock()
    temp = blip.temp.clamp(0.001, 0.5)
    image_embeds = blip.forward_image(pixel_values)
    image_feat = blip.image_features(image_embeds)
    clock.tick("online ViT fwd (ours 1x, reference 2x)")
    text_feat = blip.text_features(blip.text(input_ids, attention_mask, mode="text").last_hidden_state)
    clock.tick("unimodal text fwd (B)")
    with torch.no_grad():
        image_feat_m = F.normalize(model.vision_proj_m(model.visual_encoder_m(pixel_values)[:, 0]), dim=-1)
        clock.tick("momentum ViT fwd")
        text_hidden_m = model.text_m(input_ids, attention_mask, mode="text").last_hidden_state
        text_feat_m = F.normalize(model.text_proj_m(text_hidden_m[:, 0]), dim=-1)
        clock.tick("momentum text fwd")
    image_keys = torch.cat([image_feat_m, model.image_queue.t().clone()])
    text_keys = torch.cat([text_feat_m, model.text_queue.t().clone()])
    targets = itc_targets(B, image_keys.shape[0])
    loss_itc = itc_loss(
        image_feat, text_feat, image_keys, text_keys, temp, targets, image_feat_m, text_feat_m, args.alpha
    )
    with torch.no_grad():
        positive = torch.eye(B, dtype=torch.bool)
        neg_text, neg_image = NegativeSampler()(
            image_feat @ text_feat_m.t() / temp, text_feat @ image_feat_m.t() / temp, positive
        )
    clock.tick("ITC loss + negative sampling")
    image_kv = blip.image_kv(image_embeds)
    clock.tick("image cross-attention K/V (B rows)")
    itm_kv = concat_kv([image_kv, [(k[neg_image], v[neg_image]) for k, v in image_kv], image_kv])
    itm_ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
    itm_mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
    loss_itm = itm_loss(blip.itm_logits(itm_ids, itm_mask, image_kv=itm_kv), num_positives=B)
    clock.tick("ITM encoder fwd (3B)")
    labels = lm_labels(input_ids, attention_mask)
    loss_lm = lm_loss(blip.lm_logits(input_ids, attention_mask, image_kv=image_kv), labels)
    clock.tick("decoder + LM head fwd (B)")
    (loss_itc + loss_itm + loss_lm).backward()
    clock.tick("backward")
    model.momentum_update(args.momentum)
    clock.tick("EMA update")
    return clock.times


def reference_phases(ref: Reference, pixel_values, input_ids, attention_mask, args) -> dict[str, float]:
    """The reference step of :func:`reference_step`, phase by phase (same calls, same order)."""
    retrieval, B = ref.retrieval, input_ids.shape[0]
    clock = PhaseClock()
    temp = ref.temp.clamp(0.001, 0.5)
    image_embeds = retrieval.vision_model(pixel_values=pixel_values).last_hidden_state
    cap_embeds = ref.captioning.vision_model(pixel_values=pixel_values).last_hidden_state
    image_feat = F.normalize(retrieval.vision_proj(image_embeds[:, 0]), dim=-1)
    clock.tick("online ViT fwd (ours 1x, reference 2x)")
    text_hidden = retrieval.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    text_feat = F.normalize(retrieval.text_proj(text_hidden[:, 0]), dim=-1)
    clock.tick("unimodal text fwd (B)")
    with torch.no_grad():
        m = ref.momentum
        image_feat_m = F.normalize(
            m["vision_proj"](m["vision_model"](pixel_values=pixel_values).last_hidden_state[:, 0]), dim=-1
        )
        clock.tick("momentum ViT fwd")
        text_hidden_m = m["text_encoder"](
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        text_feat_m = F.normalize(m["text_proj"](text_hidden_m[:, 0]), dim=-1)
        clock.tick("momentum text fwd")
    loss_itc, sim_i2t, sim_t2i = in_batch_itc(
        image_feat, text_feat, image_feat_m, text_feat_m, temp, args.alpha
    )
    with torch.no_grad():
        neg_text, neg_image = sample_negatives(sim_i2t), sample_negatives(sim_t2i)
    clock.tick("ITC loss + negative sampling")
    itm_image = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
    itm_ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
    itm_ids[:, 0] = ENC_ID
    itm_mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
    hidden = retrieval.text_encoder(
        input_ids=itm_ids,
        attention_mask=itm_mask,
        encoder_hidden_states=itm_image,
        encoder_attention_mask=torch.ones(itm_image.shape[:-1], dtype=torch.long),
    ).last_hidden_state
    itm_labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)])
    loss_itm = F.cross_entropy(retrieval.itm_head(hidden[:, 0]), itm_labels)
    clock.tick("ITM encoder fwd (3B)")
    dec_ids = input_ids.clone()
    dec_ids[:, 0] = DEC_ID
    labels = dec_ids.masked_fill(attention_mask == 0, -100)
    loss_lm = ref.captioning.text_decoder(
        input_ids=dec_ids, attention_mask=attention_mask, encoder_hidden_states=cap_embeds, labels=labels
    ).loss
    clock.tick("decoder + LM head fwd (B)")
    (loss_itc + loss_itm + loss_lm).backward()
    clock.tick("backward")
    with torch.no_grad():
        for online, param_m in ref.pairs():
            param_m.lerp_(online.detach(), 1.0 - args.momentum)
    clock.tick("EMA update")
    return clock.times


def print_phases(ours, ref, pixel_values, input_ids, attention_mask, args) -> None:
    runs = {"ours": [], "reference": []}
    for i in range(max(args.repeats, 3)):
        for name in ("ours", "reference") if i % 2 == 0 else ("reference", "ours"):
            if name == "ours":
                ours.zero_grad(set_to_none=True)
                runs[name].append(ours_phases(ours, pixel_values, input_ids, attention_mask, args))
            else:
                ref.zero_grad()
                runs[name].append(reference_phases(ref, pixel_values, input_ids, attention_mask, args))
    print(
        "\nper-phase seconds (medians; the reference's ViT row holds both of its online ViT forwards, "
        "its image K/V projections run inside its ITM and decoder rows, for 3B and B rows):"
    )
    print(f"  {'phase':<42}{'ours':>8}{'reference':>11}{'ref - ours':>12}")
    totals = {"ours": 0.0, "reference": 0.0}
    for phase in runs["ours"][0]:
        row = {name: statistics.median(r.get(phase, 0.0) for r in rs) for name, rs in runs.items()}
        totals = {name: totals[name] + row[name] for name in row}
        diff = row["reference"] - row["ours"]
        print(f"  {phase:<42}{row['ours']:>8.3f}{row['reference']:>11.3f}{diff:>12.3f}")
    print(
        f"  {'sum of medians':<42}{totals['ours']:>8.3f}{totals['reference']:>11.3f}"
        f"{totals['reference'] - totals['ours']:>12.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush = prepare_torch(args)
    import transformers

    pixel_values, input_ids, attention_mask = make_batch(args)
    ours = build_ours(args)
    ref, ref_attn, sdpa_note = build_reference(args)

    tokens = (args.image_size // args.patch_size) ** 2 + 1
    n_pad = int((attention_mask == 0).sum())
    o_online, o_mom = ours_params(ours)
    r_ret, r_cap, r_online, r_mom = reference_params(ref)
    print("BLIP pretraining step: lightning_blip vs transformers (fp32, CPU)")
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}, threads {torch.get_num_threads()}, flush_denormal {flush}"
    )
    print(
        f"  preset {args.preset}: ViT width {args.vision_width} depth {args.vision_depth} "
        f"heads {args.vision_heads} ffn {args.vision_ffn} patch {args.patch_size} @ {args.image_size}px "
        f"({tokens} tokens); text width {args.text_width} layers {args.text_layers} heads {args.text_heads} "
        f"ffn {args.text_ffn} vocab {args.vocab_size}; ITC dim {args.embed_dim}"
    )
    print(
        f"  batch {args.batch_size} pairs, text length {args.text_length} ({n_pad} of "
        f"{attention_mask.numel()} positions padding), text dropout {args.dropout} "
        f"(attention {args.attention_dropout}), alpha {args.alpha}, momentum {args.momentum}, "
        f"our ITC queue {args.queue_size}; weights normal(0, 0.02) on both sides"
    )
    print(f"  transformers attention: {ref_attn}; {sdpa_note}")
    print(
        "  work per step, both: online ViT fwd+bwd, momentum ViT + text fwd (no grad), unimodal text (B), "
        "ITM encoder (3B), decoder (B), backward, EMA"
    )
    print(
        "    ours:       1 online ViT forward; image cross-attention K/V projected once for B images and "
        "indexed for the 3B ITM rows and the B LM rows; SDPA attention"
    )
    print(
        "    reference:  2 online ViT forwards (BlipForImageTextRetrieval and BlipForConditionalGeneration "
        "each run their own ViT: a cost ours removes); K/V projected for 3B (ITM) + B (LM) rows; "
        "eager attention"
    )
    print(f"  parameters ours:      online {fmt_m(o_online)} + momentum {fmt_m(o_mom)}")
    print(
        f"  parameters reference: online {fmt_m(r_online)} (retrieval {fmt_m(r_ret)} + captioning "
        f"{fmt_m(r_cap)} + temp) + momentum {fmt_m(r_mom)}"
    )
    print(
        "    (ours shares everything but self-attention between encoder and decoder, as BLIP pretrains; the "
        "two transformers models hold separate ViTs, embeddings, FFNs and cross-attentions, and the momentum "
        "copy of its text encoder also carries the unused cross-attention)"
    )

    steps = {
        "ours": lambda: ours_step(ours, pixel_values, input_ids, attention_mask, args),
        "reference": lambda: reference_step(ref, pixel_values, input_ids, attention_mask, args),
    }
    zero = {"ours": lambda: ours.zero_grad(set_to_none=True), "reference": ref.zero_grad}

    def run(name: str) -> float:
        zero[name]()
        return timed(steps[name])

    losses = {name: float(fn()) for name, fn in steps.items()}
    for name in losses:
        zero[name]()
    print(f"  first-step total loss: ours {losses['ours']:.3f}, reference {losses['reference']:.3f}")
    flops = {}
    for name, step in steps.items():
        zero[name]()
        flops[name] = count_flops(step)
    flop_ratio = flops["reference"] / flops["ours"]
    print(
        "  FLOPs per step (matmul, conv, attention; torch FlopCounterMode): "
        f"ours {flops['ours'] / 1e9:.1f} G, reference {flops['reference'] / 1e9:.1f} G ({flop_ratio:.2f}x)"
    )
    for _ in range(args.warmup):
        for name in steps:
            run(name)
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.repeats):
        for name in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            times[name].append(run(name))

    print(f"\nseconds per step ({args.repeats} interleaved repeats after {args.warmup} warm-up steps each):")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(
            f"  {name:<10} median {med[name]:.3f}  min {min(ts):.3f}  max {max(ts):.3f}  "
            f"({args.batch_size / med[name]:.1f} pairs/s)"
        )
    ratio = med["reference"] / med["ours"]
    print(
        f"  ratio reference / ours (medians): {ratio:.2f}x "
        f"(ratio of minimums {min(times['reference']) / min(times['ours']):.2f}x, of maximums "
        f"{max(times['reference']) / max(times['ours']):.2f}x)"
    )

    noisy = [name for name, ts in times.items() if max(ts) > 1.5 * min(ts)]
    if noisy:
        print(
            f"  warning: {', '.join(noisy)} varied by more than 1.5x between repeats: the machine was busy; "
            "rerun or raise --repeats"
        )
    rate = {name: flops[name] / med[name] / 1e9 for name in med}
    print(
        f"  the reference executes {flop_ratio:.2f}x our FLOPs (its second online "
        "ViT forward+backward, its 4B-row image K/V projections); the time ratio differs from that by the "
        f"per-FLOP speed: ours {rate['ours']:.0f} GFLOP/s, reference {rate['reference']:.0f} GFLOP/s"
    )
    if args.phases:
        print_phases(ours, ref, pixel_values, input_ids, attention_mask, args)
    if args.profile:
        for name, step in steps.items():
            zero[name]()
            profile(name, step, args.profile_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
