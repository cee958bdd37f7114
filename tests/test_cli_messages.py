"""What `lightning_blip` tells: every command in --help, a suggestion for a misspelling, short class
names, and an error while the model is built ending with its own one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_blip
from safetensors.torch import save_file

from lightning_blip.cli import main
from lightning_blip.models.blip import BlipModel

REPO = Path(__file__).resolve().parents[1]
EVERY_COMMAND = ["fit", "validate", "test", "predict", "quickstart", "easy-vqa-finetune", "blip2-miniature"]
EVERY_COMMAND += ["consolidate", "convert", "capfilt", "capfilt-demo"]


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_help_lists_every_command_with_one_line(args: list[str], capsys):
    main(args)
    lines = capsys.readouterr().out.splitlines()
    for name in EVERY_COMMAND:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 3, line  # a description follows the name


@pytest.mark.parametrize(
    ("typed", "meant"), [("covnert", "convert"), ("fti", "fit"), ("capfilt-dmeo", "capfilt-demo")]
)
def test_a_misspelled_command_suggests_the_right_one(typed: str, meant: str):
    with pytest.raises(SystemExit) as exit_:
        main([typed, "-c", "recipes/caption_coco.yaml"])
    assert exit_.value.code != 0 and f"did you mean {meant!r}?" in str(exit_.value.code)


def test_short_class_names_work_in_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model.help", "CaptionFinetune"])
    assert exit_.value.code == 0 and "--model.generate_kwargs" in capsys.readouterr().out


def _refused_pickle(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Path("x")}, path / "pickled.pth")
    return path / "pickled.pth"


def _other_width(path: Path) -> Path:
    """Weights of a captioner whose ViT is 2 channels wider than tests/tiny_finetune.yaml's."""
    config = tiny_blip()
    config.vision.timm_kwargs["embed_dim"] = 56
    model = BlipModel(config)
    save_file({k: v.clone() for k, v in model.state_dict().items()}, path / "wider.safetensors")
    return path / "wider.safetensors"


@pytest.mark.parametrize(
    ("option", "last_line"),
    [
        (
            "--model.init_args.generate_kwargs={num_beam: 2}",
            r"ValueError: generate_kwargs: unknown option\(s\) \['num_beam'\]",
        ),
        (
            _other_width,
            r"ValueError: vision weights .*'blocks\.0\.[a-z.]+' has shape \((\d+, )?56,?\), this model's has \((\d+, )?48,?\)$",
        ),
        (_refused_pickle, r"ValueError: .*pickled.pth needs arbitrary unpickling .* pathlib.PosixPath"),
    ],
    ids=["misspelled-option", "shape", "pickle"],
)
def test_an_error_while_the_model_is_built_ends_with_its_line(option, last_line: str, tmp_path: Path):
    if callable(option):
        option = f"--model.init_args.init_weights={option(tmp_path)}"
    recipe = ["-c", "recipes/caption_coco.yaml", "-c", "tests/tiny_finetune.yaml"]
    command = [sys.executable, "-m", "lightning_blip", "fit", *recipe, option]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert re.search(last_line, result.stderr.strip().splitlines()[-1])
    assert "Namespace(" not in result.stderr


def test_a_tiny_fit_prints_no_tips_and_none_of_our_deprecations(tmp_path: Path):
    from fake_data import write_fake_dataset

    train = write_fake_dataset(tmp_path / "images", num_images=4)
    data = [f"--data.init_args.train_annotations=[{train}]", f"--data.init_args.image_root={train.parent}"]
    recipe = [
        "-c",
        str(REPO / "recipes/blip_pretrain.yaml"),
        "-c",
        str(REPO / "tests/tiny.yaml"),
        "--trainer.fast_dev_run=1",
    ]
    command = [sys.executable, "-W", "default", "-m", "lightning_blip", "fit", *recipe, *data]
    result = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert "Tip:" not in output and "litlogger" not in output and "litmodels" not in output
    ours = [line for line in output.splitlines() if "lightning_blip" in line and "Warning" in line]
    assert not ours, ours
