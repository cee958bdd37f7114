"""The ``lightning_blip`` command: our own commands and LightningCLI's, each importing only what it needs.

``--help``, a misspelled command and the light commands (``list-pretrained``) never import torch or
Lightning; ``fit|validate|test|predict`` import :class:`~lightning_blip.cli_lightning.BlipCLI`.
"""

from __future__ import annotations

import importlib
import sys

from lightning_blip.cli_commands import COMMANDS, LIGHTNING_COMMANDS, overview, unknown_command


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lightning_blip`` console script."""
    command_line = sys.argv[1:] if argv is None else argv
    if command_line and command_line[0] in COMMANDS:
        module, func = COMMANDS[command_line[0]].target.split(":")
        getattr(importlib.import_module(module), func)(command_line[1:])
        return
    if not command_line or command_line[0] in ("-h", "--help"):
        print(overview())
        return
    if not command_line[0].startswith("-") and command_line[0] not in LIGHTNING_COMMANDS:
        sys.exit(unknown_command(command_line[0]))
    from lightning_blip.cli_lightning import BlipCLI

    BlipCLI(args=argv)  # None: LightningCLI reads sys.argv (given args as well, it warns)


if __name__ == "__main__":
    main()
