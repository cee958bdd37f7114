"""``import lightning_blip`` is cheap, and names the classes users reach for first."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightning_blip

HEAVY = "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'timm') if m in sys.modules))"


@pytest.mark.parametrize(
    "code",
    [
        "import sys, lightning_blip",
        "import sys; from lightning_blip.cli import main; main(['--help'])",
        "import sys; from lightning_blip.cli import main; main(['list-pretrained', 'blip2'])",
    ],
)
def test_the_package_help_and_list_pretrained_import_no_torch_or_lightning(code):
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; {HEAVY}"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_top_level_name_resolves_to_its_module_s_object():
    from lightning_blip.data import ImageTextDataModule
    from lightning_blip.models import BlipModel
    from lightning_blip.tasks import MEDPretrain
    from lightning_blip.weights.registry import list_pretrained

    for name in lightning_blip.__all__:
        assert getattr(lightning_blip, name) is not None, name
    assert lightning_blip.BlipModel is BlipModel and lightning_blip.MEDPretrain is MEDPretrain
    assert lightning_blip.ImageTextDataModule is ImageTextDataModule
    assert lightning_blip.list_pretrained is list_pretrained and len(lightning_blip.list_pretrained()) > 40
    assert set(lightning_blip.__all__) <= set(dir(lightning_blip))
