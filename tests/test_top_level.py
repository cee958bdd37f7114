"""``lightning_blip`` names the classes users reach for first, and importing it stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lightning_blip
from lightning_blip import callbacks, data, models, optim, tasks
from lightning_blip.weights import registry


def test_import_loads_neither_torch_nor_lightning():
    code = (
        "import json, sys, lightning_blip; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'lightning', 'pytorch_lightning', 'transformers', 'timm') or m.startswith('lightning_blip.'))))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert loaded == []


@pytest.mark.parametrize("name", lightning_blip.__all__)
def test_every_name_resolves_to_the_class_of_its_package(name):
    homes = [m for m in (models, tasks, data, callbacks, optim, registry) if hasattr(m, name)]
    assert homes, f"{name} is in no public package"
    assert all(getattr(lightning_blip, name) is getattr(m, name) for m in homes)
    assert name in dir(lightning_blip)


def test_the_first_names_are_there_and_others_fail():
    from lightning_blip import BlipModel, ImageTextDataModule, MEDPretrain  # the README's example

    assert (BlipModel, MEDPretrain, ImageTextDataModule) == (
        models.BlipModel,
        tasks.MEDPretrain,
        data.ImageTextDataModule,
    )
    wanted = {"BlipVQA", "Blip2Model", "Blip2ForGeneration", "QFormer", "QFormerStage1", "QFormerStage2"}
    wanted |= {"CaptionFinetune", "VQAFinetune", "RetrievalFinetune", "CaptionDataModule", "VQADataModule"}
    wanted |= {"RetrievalDataModule", "MomentumEncoder", "HardNegativeMining", "PredictionWriter"}
    assert wanted <= set(lightning_blip.__all__)
    with pytest.raises(AttributeError, match="no attribute 'BlipModle'"):
        lightning_blip.BlipModle  # noqa: B018


@pytest.mark.parametrize("args", [["--help"], ["list-pretrained", "blip2"]])
def test_help_and_list_pretrained_import_no_torch_or_lightning(args):
    code = (
        f"import sys; from lightning_blip.cli import main; main({args!r}); "
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'timm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
