"""The commands of ``lightning_blip``: one line each for ``--help``, and a suggestion for a misspelling."""

from __future__ import annotations

import difflib
from typing import NamedTuple


class Command(NamedTuple):
    target: str  # "module:function", called with the rest of the command line
    summary: str


LIGHTNING_COMMANDS = {
    "fit": "train a recipe: lightning_blip fit -c recipes/<recipe>.yaml [--ckpt_path=last]",
    "validate": "evaluate on the validation split (--ckpt_path=<checkpoint>)",
    "test": "evaluate on the test split (--ckpt_path=<checkpoint>)",
    "predict": "write captions, answers or embeddings (--ckpt_path=<checkpoint>)",
}
"""LightningCLI's subcommands (``BlipCLI``)."""

COMMANDS = {
    "quickstart": Command(
        "lightning_blip.demos.quickstart:main",
        "pretrain a small MED on easy-VQA captions, offline, on the CPU",
    ),
    "easy-vqa-finetune": Command(
        "lightning_blip.demos.easy_vqa_finetune:main",
        "captioning, VQA and retrieval fine-tuned from the quickstart's model",
    ),
    "blip2-miniature": Command(
        "lightning_blip.demos.blip2_miniature:main", "BLIP-2's two stages on easy-VQA, offline, on the CPU"
    ),
    "consolidate": Command(
        "lightning_blip.cli_consolidate:main", "turn a sharded (FSDP2) checkpoint directory into one file"
    ),
    "convert": Command(
        "lightning_blip.convert.command:main", "convert weights: transformers, salesforce BLIP, LAVIS, ours"
    ),
    "list-pretrained": Command(
        "lightning_blip.cli_pretrained:main", "released checkpoints and pretrained parts, by name"
    ),
    "capfilt": Command(
        "lightning_blip.capfilt.command:main",
        "bootstrap a data set with a captioner and a filter (-c recipes/capfilt.yaml)",
    ),
    "capfilt-demo": Command(
        "lightning_blip.demos.capfilt_demo:main",
        "CapFilt on easy-VQA, offline: does the filter find the wrong captions?",
    ),
}
"""Our own commands, dispatched before LightningCLI (plain parsers)."""


def overview() -> str:
    """What ``lightning_blip --help`` prints: every command with its one line."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *COMMANDS]))
    lines = ["usage: lightning_blip <command> [options]   (lightning_blip <command> --help for its options)"]
    lines += ["", "training and evaluation (LightningCLI):"]
    lines += [f"  {name:<{width}}  {summary}" for name, summary in LIGHTNING_COMMANDS.items()]
    lines += ["", "other commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def unknown_command(name: str) -> str:
    """The message for a command that does not exist, with the closest one if any."""
    close = difflib.get_close_matches(name, [*LIGHTNING_COMMANDS, *COMMANDS], n=1, cutoff=0.5)
    hint = f" did you mean {close[0]!r}?" if close else ""
    return f"lightning_blip: unknown command {name!r};{hint or ''} lightning_blip --help lists them"
