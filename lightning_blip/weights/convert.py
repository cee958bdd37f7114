"""``lightning_blip convert --from transformers --to ours SRC DST``: a transformers BLIP directory to ours.

DST is a directory with ``model.safetensors`` (every :class:`BlipModel` weight, loadable with
``BlipModel.load_pretrained``), ``config.json`` (our :class:`BlipConfig`, ``BlipConfig.from_dict``)
and ``conversion.json`` (the load report: which of our weights came from SRC, and which the
checkpoint's kind lacks and were left at their initialisation; see
:mod:`lightning_blip.weights.transformers_blip`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.med import MEDConfig
from lightning_blip.models.vision import VisionConfig
from lightning_blip.weights.transformers_blip import load_transformers_blip

BLIP_VIT_EPS = 1e-6  # BLIP's and timm's ViT LayerNorm epsilon, which our VisionEncoder uses


def blip_config_from_transformers(directory: str | Path) -> tuple[BlipConfig, list[str]]:
    """Our :class:`BlipConfig` for a transformers BLIP ``config.json``, and notes on what differs.

    Read with transformers' ``BlipConfig`` so that defaults left out of the file are filled in.
    """
    from transformers import BlipConfig as HFBlipConfig

    hf = HFBlipConfig.from_pretrained(str(directory), local_files_only=True)
    v, t = hf.vision_config, hf.text_config
    vision = VisionConfig(
        model_name="vit_base_patch16_224",  # the architecture; its sizes come from timm_kwargs
        image_size=v.image_size,
        timm_kwargs={
            "embed_dim": v.hidden_size,
            "depth": v.num_hidden_layers,
            "num_heads": v.num_attention_heads,
            "patch_size": v.patch_size,
            "mlp_ratio": v.intermediate_size / v.hidden_size,
        },
    )
    text = MEDConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        num_layers=t.num_hidden_layers,
        num_heads=t.num_attention_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        dropout=t.hidden_dropout_prob,
        attention_dropout=t.attention_probs_dropout_prob,
        layer_norm_eps=t.layer_norm_eps,
        pad_token_id=t.pad_token_id,
    )
    config = BlipConfig(
        vision=vision,
        text=text,
        embed_dim=hf.image_text_hidden_size,
        bos_token_id=t.bos_token_id,
        sep_token_id=t.sep_token_id,
        pad_token_id=t.pad_token_id,
    )
    notes = []
    if v.layer_norm_eps != BLIP_VIT_EPS:
        notes.append(
            f"vision layer_norm_eps: transformers config {v.layer_norm_eps}, ours {BLIP_VIT_EPS} (BLIP's ViT)"
        )
    if v.hidden_act != "gelu" or t.hidden_act != "gelu":
        notes.append(f"activations {v.hidden_act!r}/{t.hidden_act!r}: ours use exact GELU")
    return config, notes


def convert_transformers_blip(source: str | Path, output: str | Path, strict: bool = True) -> Path:
    """Write our BLIP weights, config and load report for a transformers ``save_pretrained`` directory."""
    config, notes = blip_config_from_transformers(source)
    model = BlipModel(config)
    report = load_transformers_blip(model, source, strict=strict)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory (the LM head's tied word embeddings)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        output / "model.safetensors",
    )
    (output / "config.json").write_text(json.dumps(asdict(config), indent=2))
    summary = {"source": str(source), "notes": notes, **asdict(report)}
    (output / "conversion.json").write_text(json.dumps(summary, indent=2))
    return output


def main(argv: list[str] | None = None) -> None:
    """``lightning_blip convert --from transformers --to ours SRC DST``."""
    parser = argparse.ArgumentParser(prog="lightning_blip convert", description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source_format", choices=["transformers"], required=True)
    parser.add_argument("--to", dest="target_format", choices=["ours"], required=True)
    parser.add_argument("source", help="a transformers BLIP save_pretrained directory")
    parser.add_argument("output", help="the directory to write")
    parser.add_argument(
        "--no-strict", dest="strict", action="store_false", help="do not fail on missing/unexpected keys"
    )
    args = parser.parse_args(argv)
    out = convert_transformers_blip(args.source, args.output, strict=args.strict)
    report = json.loads((out / "conversion.json").read_text())
    print(
        f"{out}: {len(report['loaded'])} weights loaded, {len(report['missing_expected'])} left at "
        f"their initialisation (not in this kind of checkpoint); see conversion.json"
    )
    for note in report["notes"]:
        print(f"note: {note}")
