"""``init_weights`` prints what it loaded: weights loaded, absent as expected, missing, source keys not used."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import tiny_blip, tiny_blip2
from safetensors.torch import save_file

from lightning_blip.models import Blip2Model, BlipModel
from lightning_blip.tasks import CaptionFinetune, MEDPretrain, QFormerStage1, RetrievalFinetune, VQAFinetune

REPORT = re.compile(
    r"init_weights (?P<path>\S+): (?P<loaded>\d+) weights loaded, (?P<expected>\d+) absent as expected, "
    r"(?:(?P<mismatched>\d+) left at init, shape differs[^,]*(?:, [^,]*)*?, )?(?P<missing>\d+) missing, "
    r"(?P<unused>\d+) source keys not used"
)


@pytest.fixture
def printed(caplog):
    """The ``init_weights`` reports printed through Lightning's rank-zero logger."""
    caplog.set_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero")
    return lambda: [m.groupdict() for r in caplog.records if (m := REPORT.search(r.getMessage()))]


def _save(state: dict, path) -> None:
    save_file({k: v.clone().contiguous() for k, v in state.items()}, path)  # tied weights as copies


def _counts(report: dict) -> tuple[int, int, int, int]:
    return int(report["loaded"]), int(report["expected"]), int(report["missing"]), int(report["unused"])


@pytest.mark.parametrize("task", [MEDPretrain, CaptionFinetune])
def test_med_tasks_report_every_weight_of_a_blip_model(task, tmp_path, printed):
    source = BlipModel(tiny_blip())
    _save(source.state_dict(), tmp_path / "blip.safetensors")
    path = str(tmp_path / "blip.safetensors")
    task(tiny_blip(), init_weights=path)
    (report,) = printed()
    assert report["path"] == path and _counts(report) == (len(source.state_dict()), 0, 0, 0)


def test_a_pretraining_checkpoint_reports_its_momentum_encoders_and_queues_as_not_used(tmp_path, printed):
    pretrain = MEDPretrain(tiny_blip(), queue_size=8)
    state = pretrain.state_dict()
    torch.save({"state_dict": state}, tmp_path / "pretrain.ckpt")
    RetrievalFinetune(tiny_blip(), queue_size=8, init_weights=str(tmp_path / "pretrain.ckpt"))
    (report,) = printed()
    own = [k for k in state if k.startswith("model.blip.")]
    # the online BlipModel's weights load; everything else of the pretraining module (momentum copies,
    # queues, their pointer, the temperature's momentum twin...) is a source key this model does not use
    assert _counts(report) == (len(own), 0, 0, len(state) - len(own))


def test_vqa_reports_the_weights_left_at_init_by_shape(tmp_path, printed):
    source = BlipModel(tiny_blip())
    _save(source.state_dict(), tmp_path / "blip.safetensors")
    module = VQAFinetune(tiny_blip(), init_weights=str(tmp_path / "blip.safetensors"))
    (report,) = printed()
    n_model = len(module.model.state_dict())
    mismatched = int(report["mismatched"] or 0)
    loaded, expected, missing, unused = _counts(report)
    assert loaded + mismatched == n_model and (expected, missing) == (0, 0)
    # BLIP's ITC projections, temperature and ITM head have no place in the VQA model
    heads = [
        k for k in source.state_dict() if k.startswith(("vision_proj.", "text_proj.", "itm_head.", "temp"))
    ]
    assert unused >= len(heads) > 0


def test_stage1_reports_the_frozen_vit_as_absent_as_expected(tmp_path, printed):
    source = Blip2Model(tiny_blip2())
    state = {
        k: v for k, v in source.state_dict().items() if not k.startswith("image_encoder.visual_encoder.")
    }
    frozen = len(source.state_dict()) - len(state)
    _save(state, tmp_path / "stage1.safetensors")
    QFormerStage1(tiny_blip2(), init_weights=str(tmp_path / "stage1.safetensors"))
    (report,) = printed()
    assert _counts(report) == (len(state), frozen, 0, 0) and frozen > 0


def test_a_missing_weight_is_named(tmp_path):
    state = BlipModel(tiny_blip()).state_dict()
    del state["text_proj.weight"]
    _save(state, tmp_path / "blip.safetensors")
    with pytest.raises(KeyError, match="text_proj.weight"):
        CaptionFinetune(tiny_blip(), init_weights=str(tmp_path / "blip.safetensors"))
