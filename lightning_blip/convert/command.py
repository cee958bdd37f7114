"""``lightning_blip convert [--model blip|blip2] --from FORMAT --to FORMAT SRC DST``: weights between formats.

``--to ours`` writes a directory with ``model.safetensors`` (every weight of a :class:`BlipModel`,
loadable with ``BlipModel.load_pretrained``, or of a :class:`BlipVQA` for a VQA checkpoint, loadable
with ``BlipVQA.load_pretrained``), ``config.json`` (our :class:`BlipConfig`, ``BlipConfig.from_dict``)
and ``conversion.json`` (the load report: which of our weights came from SRC, which the checkpoint's
kind lacks and were left at their initialisation, which source keys were tied copies or ignored).
``--model blip2`` writes our BLIP-2 model the same way, its LLM in ``llm/``
(:func:`~lightning_blip.convert.ours_blip2.convert_transformers_blip2`). ``--to transformers``
writes a ``save_pretrained`` directory with the processor files of our preprocessing
(:mod:`lightning_blip.convert.export_blip`, :mod:`lightning_blip.convert.export_blip2`,
:mod:`lightning_blip.convert.processor`). Every model reads any of these with
``Model.from_pretrained(path)``. Which (model, from, to) triples exist is :data:`CONVERTERS`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from lightning_blip.convert.export_blip import TRANSFORMERS_CLASSES, export_ours_dir
from lightning_blip.convert.export_blip2 import export_transformers_blip2
from lightning_blip.convert.ours_blip2 import convert_transformers_blip2
from lightning_blip.models.blip import BlipConfig, BlipModel, BlipVQA
from lightning_blip.models.blip.pretrained import VIT_PRESETS, blip_config, blip_config_from_transformers
from lightning_blip.models.blip2 import Blip2Config, Blip2ForGeneration, Blip2LLMConfig, Blip2Model
from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.keymap import LoadReport
from lightning_blip.weights.lavis_blip2 import lavis_blip2_model
from lightning_blip.weights.salesforce_blip import checkpoint_kind, load_salesforce_blip
from lightning_blip.weights.transformers_blip import load_transformers_blip, read_source
from lightning_blip.weights.transformers_blip2 import recorded_image_token_index, save_our_blip2
from lightning_blip.weights.transformers_blip_vqa import is_vqa_checkpoint, load_transformers_blip_vqa


def write_ours(
    model: nn.Module,
    config: BlipConfig,
    report: LoadReport,
    output: str | Path,
    source: str,
    notes: list[str],
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``conversion.json`` (the report) to ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory (the LM head's tied word embeddings)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        output / "model.safetensors",
    )
    (output / "config.json").write_text(json.dumps(asdict(config), indent=2))
    summary = {"source": source, "model": type(model).__name__, "notes": notes, **asdict(report)}
    (output / "conversion.json").write_text(json.dumps(summary, indent=2))
    return output


def convert_transformers_blip(source: str | Path, output: str | Path, strict: bool = True) -> Path:
    """Write ours for a transformers BLIP ``save_pretrained`` directory: a ``BlipModel`` for
    ``BlipForConditionalGeneration``/``BlipForImageTextRetrieval``, a ``BlipVQA`` for
    ``BlipForQuestionAnswering``."""
    config, notes = blip_config_from_transformers(source)
    state, _ = read_source(source)
    if is_vqa_checkpoint(state):
        model: nn.Module = BlipVQA(config)
        report = load_transformers_blip_vqa(model, state, strict=strict)
    else:
        model = BlipModel(config)
        report = load_transformers_blip(model, state, strict=strict)
    return write_ours(model, config, report, output, str(source), notes)


def convert_salesforce_blip(
    source: str | Path, output: str | Path, config: str, image_size: int | None = None, strict: bool = True
) -> Path:
    """Write ours for a salesforce/BLIP or LAVIS BLIP ``.pth``: a ``BlipVQA`` for a VQA checkpoint,
    else a ``BlipModel``. ``config``/``image_size``: see :func:`~lightning_blip.models.blip.pretrained.blip_config`."""
    state = load_state_dict_file(source)
    blip = blip_config(config, state, image_size)
    model = BlipVQA(blip) if checkpoint_kind(state) == "vqa" else BlipModel(blip)
    report = load_salesforce_blip(model, state, strict=strict)
    return write_ours(model, blip, report, output, str(source), [])


Converter = Callable[[argparse.Namespace], Path]


def _transformers_to_ours(args: argparse.Namespace) -> Path:
    return convert_transformers_blip(args.source, args.output, strict=args.strict)


def _salesforce_to_ours(args: argparse.Namespace) -> Path:
    if args.config is None:
        raise SystemExit(
            f"--from {args.source_format} needs --config ({'|'.join(VIT_PRESETS)} or a config.json)"
        )
    return convert_salesforce_blip(args.source, args.output, args.config, args.image_size, args.strict)


def _ours_to_transformers(args: argparse.Namespace) -> Path:
    return export_ours_dir(args.source, args.output, args.task)


def _salesforce_to_transformers(args: argparse.Namespace) -> Path:
    with tempfile.TemporaryDirectory() as ours:
        _salesforce_to_ours(argparse.Namespace(**{**vars(args), "output": ours}))
        return export_ours_dir(ours, args.output, args.task)


def _transformers_to_ours_blip2(args: argparse.Namespace) -> Path:
    return convert_transformers_blip2(args.source, args.output, strict=args.strict)


def _ours_to_transformers_blip2(args: argparse.Namespace) -> Path:
    """Any BLIP-2 checkpoint of ours (``convert --to ours`` directory, Lightning ``.ckpt``, FSDP2
    directory); a converted directory's recorded image token is kept."""
    try:
        model: nn.Module = Blip2ForGeneration.from_pretrained(args.source)
    except (KeyError, ValueError):  # a stage-1 model
        model = Blip2Model.from_pretrained(args.source)
    return export_transformers_blip2(
        model, args.output, recorded_image_token_index(args.source), str(args.source)
    )


def _lavis_to_ours_blip2(args: argparse.Namespace) -> Path:
    """A LAVIS BLIP-2 ``.pth``, with ``--config``: a ``config.json`` of ours (sizes and, for stage 2, the LLM)."""
    if args.config is None or not Path(args.config).is_file():
        raise SystemExit(
            "--model blip2 --from lavis needs --config <a config.json of ours: sizes and the LLM>"
        )
    values = json.loads(Path(args.config).read_text())
    generation = "llm" in values
    config = Blip2LLMConfig.from_dict(values) if generation else Blip2Config.from_dict(values)
    model, report = lavis_blip2_model(
        Blip2ForGeneration if generation else Blip2Model, config, args.source, args.strict
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    save_our_blip2(model, output)
    summary = {"source": str(args.source), "model": type(model).__name__, "notes": [], **asdict(report)}
    (output / "conversion.json").write_text(json.dumps(summary, indent=2))
    return output


CONVERTERS: dict[tuple[str, str, str], Converter] = {
    ("blip", "transformers", "ours"): _transformers_to_ours,
    ("blip", "salesforce", "ours"): _salesforce_to_ours,
    ("blip", "lavis", "ours"): _salesforce_to_ours,
    ("blip", "ours", "transformers"): _ours_to_transformers,
    ("blip", "salesforce", "transformers"): _salesforce_to_transformers,
    ("blip", "lavis", "transformers"): _salesforce_to_transformers,
    ("blip2", "transformers", "ours"): _transformers_to_ours_blip2,
    ("blip2", "lavis", "ours"): _lavis_to_ours_blip2,
    ("blip2", "ours", "transformers"): _ours_to_transformers_blip2,
}
"""``(--model, --from, --to)`` -> the function that converts SRC into DST."""

MODELS = ("blip", "blip2")
FORMATS_FROM = ("transformers", "salesforce", "lavis", "ours")
FORMATS_TO = ("ours", "transformers")


def main(argv: list[str] | None = None) -> None:
    """``lightning_blip convert [--model blip] --from FORMAT --to FORMAT SRC DST``."""
    parser = argparse.ArgumentParser(prog="lightning_blip convert", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="blip", help="model family (default: blip)")
    parser.add_argument("--from", dest="source_format", choices=FORMATS_FROM, required=True)
    parser.add_argument("--to", dest="target_format", choices=FORMATS_TO, required=True)
    parser.add_argument("source", help="a directory (transformers, ours) or a .pth file (salesforce, lavis)")
    parser.add_argument("output", help="the directory to write")
    parser.add_argument(
        "--config",
        help=f"--from salesforce/lavis: {'|'.join(VIT_PRESETS)} (ViT-B/16 or ViT-L/16 + BERT-base) or "
        "the path of a config.json of ours (--model blip2: a config.json of ours, naming the LLM)",
    )
    parser.add_argument(
        "--image-size", type=int, help="--from salesforce/lavis: resample the ViT position embeddings to it"
    )
    parser.add_argument(
        "--task",
        choices=sorted(TRANSFORMERS_CLASSES),
        help="--to transformers from a BlipModel: captioning (BlipForConditionalGeneration) or retrieval "
        "(BlipForImageTextRetrieval); a BlipVQA is always BlipForQuestionAnswering",
    )
    parser.add_argument(
        "--no-strict", dest="strict", action="store_false", help="do not fail on missing/unexpected keys"
    )
    args = parser.parse_args(argv)
    converter = CONVERTERS.get((args.model, args.source_format, args.target_format))
    if converter is None:
        supported = ", ".join(f"--from {a} --to {b}" for m, a, b in CONVERTERS if m == args.model)
        parser.error(
            f"--model {args.model} --from {args.source_format} --to {args.target_format} is not supported; "
            f"supported: {supported or 'none yet'}"
        )
    out = converter(args)
    print(f"wrote {out}")
    if (out / "conversion.json").is_file():
        report = json.loads((out / "conversion.json").read_text())
        print(f"{report['model']}: {LoadReport.from_dict(report).summary()}; see conversion.json")
        for note in report["notes"]:
            print(f"note: {note}")
