"""``BlipCLI``: LightningCLI for ``lightning_blip fit|validate|test|predict`` (recipes, resume, overrides)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

# imported so that jsonargparse resolves the short names of their classes: `--model CaptionFinetune`
import lightning_blip.data
import lightning_blip.tasks  # noqa: F401
from lightning_blip.cli_errors import underlying_error
from lightning_blip.cli_overrides import check_checkpoint_fits, command_line_model_keys, reapply
from lightning_blip.cli_quiet import silence_tips
from lightning_blip.resume import resume_last
from lightning_blip.weights.distributed import check_distributed_checkpoint


class BlipCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with OmegaConf interpolation in recipes."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        silence_tips()
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

    def parse_arguments(self, parser, args) -> None:
        self._command_line = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyper-parameters over the recipe, then the command line's ``--model.<field>``
        options over both (LightningCLI alone would drop them, see :mod:`lightning_blip.cli_overrides`)."""
        given = self.config.clone()
        super()._parse_ckpt_path()
        self._overridden = {}
        if isinstance(self._command_line, list) and self.config.get("subcommand"):
            keys = command_line_model_keys(self._command_line, self.config.subcommand)
            self._overridden = reapply(self.config, given, keys)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, but an error of a model's or data's ``__init__`` is raised as itself, so
        the output ends with its message instead of jsonargparse's dump of the config."""
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = underlying_error(error)
            if cause is error:
                raise
            raise cause from None

    def after_instantiate_classes(self) -> None:
        path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if path and Path(path).is_file():
            check_checkpoint_fits(self.model, path, self._overridden)

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
