"""Every ```python block of README.md and CONTRIBUTING.md runs as written.

Each block runs alone, in a fresh namespace, with a temporary working directory that holds tiny
stand-ins at the paths the README names as the user's (``models/...``, ``*.pth``, ``outputs/...``).
A block that raises fails the test named after its file, line and first line.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import tiny_blip, tiny_blip2, tiny_qformer, tiny_vision

from lightning_blip.convert.export_blip import export_transformers_blip
from lightning_blip.convert.export_blip2 import export_blip2_to_transformers
from lightning_blip.models import Blip2ForGeneration, Blip2LLMConfig, Blip2Model, BlipModel, BlipVQA
from lightning_blip.models.blip2.small_llm import save_tiny_llm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks() -> list:
    """One ``pytest.param(name, line, code)`` per block, its id ``README.md:<line> <first line>``."""
    params = []
    for name in DOCS:
        text = (ROOT / name).read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1  # the block's first code line
            first = next((s for s in match.group(1).splitlines() if s.strip()), "")
            params.append(pytest.param(name, line, match.group(1), id=f"{name}:{line} {first[:50]}"))
    return params


def _test_module(relative: str):
    """A test module of ours, for its writers of other projects' checkpoint layouts."""
    path = ROOT / "tests" / relative
    spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # for its imports of its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _write_blip_stand_ins(root: Path) -> None:
    """BLIP: transformers captioning and VQA directories, a salesforce ``.pth``, a Lightning ``.ckpt``."""
    from transformers import BlipForConditionalGeneration

    captioner = BlipModel(tiny_blip())
    export_transformers_blip(captioner, root / "models/blip-image-captioning-base", task="captioning")
    # transformers' answer decoder reads the question with the ViT's width: equal widths
    vqa = replace(tiny_blip(), vision=tiny_vision(timm_kwargs_extra={"embed_dim": 64}))
    export_transformers_blip(BlipVQA(vqa), root / "models/blip-vqa-base")

    salesforce_layout = _test_module("weights/test_salesforce_blip.py").salesforce_layout
    hf = BlipForConditionalGeneration.from_pretrained(root / "models/blip-image-captioning-base")
    torch.save({"model": salesforce_layout(hf.state_dict())}, root / "model_base_capfilt_large.pth")
    (root / "my_blip.json").write_text(json.dumps(asdict(tiny_blip())))

    checkpoint = root / "outputs/pretrain/checkpoints/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    state = {f"model.blip.{k}": v for k, v in captioner.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": asdict(tiny_blip())}}, checkpoint)


def _write_blip2_stand_ins(root: Path) -> None:
    """BLIP-2: a tiny OPT, transformers directories, a LAVIS ``.pth``, an FSDP2 shard directory."""
    from transformers import Blip2ForConditionalGeneration

    save_tiny_llm("opt", root / "models/opt-2.7b")
    config = Blip2LLMConfig(
        vision=tiny_blip2().vision,
        qformer=tiny_qformer(text=False),
        llm="models/opt-2.7b",
        ln_vision_eps=1e-6,
    )
    model = Blip2ForGeneration(config)
    shards = root / "outputs/stage2/checkpoints/last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(
            {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, checkpoint_id=shards
        )
    torch.save({"hyper_parameters": {"config": asdict(config)}}, shards / "meta.pt")

    model.llm.resize_token_embeddings(len(model.tokenizer) + 1)  # a row for transformers' <image>
    export_blip2_to_transformers(model, root / "models/blip2-opt-2.7b")
    retrieval = Blip2Model(replace(tiny_blip2(), ln_vision_eps=1e-6))  # transformers has one epsilon
    export_blip2_to_transformers(retrieval, root / "models/blip2-itm-vit-g")

    lavis_state = _test_module("weights/test_blip2_weights_parity.py").lavis_state
    hf = Blip2ForConditionalGeneration.from_pretrained(root / "models/blip2-opt-2.7b")
    state = {k: v for k, v in lavis_state(hf, "opt").items() if not k.startswith("opt_model.")}
    torch.save({"model": state}, root / "blip2_pretrained_opt2.7b.pth")
    (root / "my_blip2.json").write_text(json.dumps(asdict(config)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with tiny stand-ins at the README's paths (the LLMs included)."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the BLIP-2 config names its LLM by the README's relative path
        _write_blip_stand_ins(root)
        _write_blip2_stand_ins(root)
    return root


def test_every_python_fence_is_found():
    fences = sum(len(re.findall(r"^```python", (ROOT / n).read_text(), re.MULTILINE)) for n in DOCS)
    assert len(python_blocks()) == fences >= 5


@pytest.mark.parametrize(("name", "line", "code"), python_blocks())
def test_block_runs_as_written(workdir, monkeypatch, name: str, line: int, code: str):
    monkeypatch.chdir(workdir)
    # padded so that a traceback gives the line numbers of the document
    compiled = compile("\n" * (line - 1) + code, str(ROOT / name), "exec")
    exec(compiled, {"__name__": "__readme__"})  # noqa: S102 (our own README, run as a user would)
