"""The ``lightning_blip`` command: LightningCLI for fit/validate/test/predict, plus our own commands."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lightning_blip.checkpoints import check_distributed_checkpoint
from lightning_blip.resume import resume_last


class BlipCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with OmegaConf interpolation in recipes."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def _check_checkpoint_dir(self) -> None:
        """Lightning resumes from a directory (FSDP2) with torch's unrestricted unpickler: refuse
        one that would need it, before the trainer reads anything."""
        path = self.config[self.subcommand].get("ckpt_path")
        if path and Path(path).is_dir():
            check_distributed_checkpoint(path)

    def before_fit(self) -> None:
        """``--ckpt_path=last``: the run's newest last checkpoint, logging on where that run logged."""
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            path = str(resume_last(self.trainer))
            self.config_init[self.subcommand]["ckpt_path"] = self.config[self.subcommand]["ckpt_path"] = path
        self._check_checkpoint_dir()

    before_validate = before_test = before_predict = _check_checkpoint_dir


COMMANDS = {
    "quickstart": "lightning_blip.quickstart:main",
    "easy-vqa-finetune": "lightning_blip.easy_vqa_finetune:main",
    "blip2-miniature": "lightning_blip.blip2_miniature:main",
    "consolidate": "lightning_blip.checkpoints:main",
    "convert": "lightning_blip.weights.convert:main",
    "capfilt": "lightning_blip.capfilt.command:main",
    "capfilt-demo": "lightning_blip.capfilt_demo:main",
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lightning_blip`` console script."""
    command_line = sys.argv[1:] if argv is None else argv
    if command_line and command_line[0] in COMMANDS:
        module, func = COMMANDS[command_line[0]].split(":")
        getattr(__import__(module, fromlist=[func]), func)(command_line[1:])
        return
    BlipCLI(args=argv)  # None: LightningCLI reads sys.argv (given args as well, it warns)


if __name__ == "__main__":
    main()
