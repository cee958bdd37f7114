"""The ``README.md`` model card of a transformers export: hub front matter, the conversion's counts, and
a "how to use it" snippet that runs against the exported folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import convert_ours_to_transformers, tiny_blip, tiny_blip2
from safetensors import safe_open
from test_blip_vqa_transformers import our_vqa
from test_transformers_processor import blip2  # noqa: F401 (a fixture: tiny OPT BLIP-2, exported)

from lightning_blip.convert.export_blip import export_transformers_blip
from lightning_blip.convert.export_blip2 import export_blip2_to_transformers
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.blip2 import Blip2Model
from lightning_blip.weights.model_card import PLACEHOLDER, left_out_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def _tensors(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return len(list(f.keys()))


def _run_snippet(body: str, folder: Path) -> None:
    code = re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)
    exec(compile(code.replace(PLACEHOLDER, str(folder)), "model card", "exec"), {})  # noqa: S102 (the card's own snippet)


CAPTIONER_LEAVES = r"text\.layers\.\d+\.self_attn\..*|(vision_proj|text_proj|itm_head)\..*|temp"
RETRIEVER_LEAVES = r"text\.layers\.\d+\.decoder_self_attn\..*|lm_head\..*|temp"


@pytest.mark.parametrize(
    ("make", "task", "pipeline_tag", "leaves"),
    [
        (lambda: BlipModel(tiny_blip()), "captioning", "image-to-text", CAPTIONER_LEAVES),
        (lambda: BlipModel(tiny_blip()), "retrieval", "zero-shot-image-classification", RETRIEVER_LEAVES),
        (our_vqa, "vqa", "visual-question-answering", None),
    ],
)
def test_blip_exports_carry_a_card_whose_snippet_runs(make, task, pipeline_tag, leaves, tmp_path):
    model = make().eval()
    out = export_transformers_blip(model, tmp_path / "hf", task, source="model_base.pth")
    front, body = _card(out)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == pipeline_tag
    assert "blip" in front["tags"] and "arXiv:2201.12086" in body and "`model_base.pth`" in body
    assert f"Converted: {_tensors(out)} tensors" in body
    counts = [int(n) for n in re.findall(r"` \((\d+)\)", body.split("Left out", 1)[1].split("\n", 1)[0])]
    # what a captioner or a retriever of transformers has no place for, counted from our keys here
    # (a weight tied to one that is written, like the LM head's decoder = the word embeddings, is not left out)
    kept = {
        id(t)
        for k, t in model.named_parameters(remove_duplicate=False)
        if not (leaves and re.fullmatch(leaves, k))
    }
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    expected = sum(
        bool(leaves and re.fullmatch(leaves, k)) and id(tensors[k]) not in kept for k in model.state_dict()
    )
    assert sum(counts) == expected and (expected > 0) == (leaves is not None)
    _run_snippet(body, out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_a_blip2_stage1_export_card_counts_and_runs(tmp_path):
    model = Blip2Model(tiny_blip2()).eval()
    out = export_blip2_to_transformers(model, tmp_path / "hf", source="blip2_pretrained.pth")
    front, body = _card(out)
    assert front["pipeline_tag"] == "zero-shot-image-classification" and "blip-2" in front["tags"]
    assert f"Converted: {_tensors(out)} tensors" in body and "arXiv:2301.12597" in body
    _run_snippet(body, out)


def test_the_convert_command_writes_the_card_naming_its_source(tmp_path):
    ours = BlipModel(tiny_blip()).eval()
    src, _ = convert_ours_to_transformers(ours, tmp_path, "captioning")
    front, body = _card(tmp_path / "hf")
    assert front["pipeline_tag"] == "image-to-text" and f"`{src}`" in body


def test_left_out_groups_count_by_first_name():
    patterns = [r"text\.layers\.\d+\.self_attn\..*", r"itm_head\..*"]
    keys = [
        "text.layers.0.self_attn.query.weight",
        "text.layers.1.self_attn.key.bias",
        "itm_head.bias",
        "temp",
    ]
    assert left_out_groups(keys, patterns) == {"text.layers.*.self_attn.*": 2, "itm_head.*": 1, "temp": 1}


def test_a_blip2_generation_card_names_the_stop_ids_and_its_snippet_runs(blip2):  # noqa: F811 (the fixture)
    ours, _, _, _ = blip2
    out = Path(blip2[2].config.name_or_path)
    front, body = _card(out)
    assert front["pipeline_tag"] == "image-to-text" and f"eos_token_id={list(ours._eos_ids)}" in body
    assert f"Converted: {_tensors(out)} tensors" in body
    _run_snippet(body, out)
