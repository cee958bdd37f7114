"""Validation when images are unreadable: empty batches, ranks with fewer rows, 2 ranks like 1.

One validation set of 5 pairs whose second image is unreadable, batches of one: the second batch is
empty, and on 2 ranks that batch is rank 1's first one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_blip, tiny_blip2
from fake_data import write_fake_dataset

from lightning_blip.data import ImageTextDataModule
from lightning_blip.models.blip2 import Blip2LLMConfig
from lightning_blip.models.blip2.small_llm import save_tiny_llm
from lightning_blip.tasks import CaptionFinetune, MEDPretrain, QFormerStage1, QFormerStage2

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
import lightning as L, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_blip
from lightning_blip.data import ImageTextDataModule
from lightning_blip.tasks import CaptionFinetune, MEDPretrain
torch.set_num_threads(1)
devices, root, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
results = {{}}
for name, task in (("caption", lambda: CaptionFinetune(tiny_blip())), ("itc", lambda: MEDPretrain(tiny_blip(), queue_size=16))):
    torch.manual_seed(0)  # the same weights in the 1- and the 2-device run
    module = task()
    data = ImageTextDataModule(root + "/val.json", val_annotations=root + "/val.json", image_root=root,
                               image_size=32, batch_size=1, eval_batch_size=1, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    results[name] = {{k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}}
if trainer.is_global_zero:
    open(out, "w").write(json.dumps(results))
"""


def _val_set(root: Path) -> Path:
    """5 pairs, the second one's image unreadable."""
    records = json.loads(write_fake_dataset(root, num_images=4).read_text())
    (root / "bad.png").write_bytes(b"not a png")
    records.insert(1, {"image": "bad.png", "caption": "a broken image", "image_id": 99})
    (root / "val.json").write_text(json.dumps(records))
    return root / "val.json"


def _validate(module: L.LightningModule, val: Path) -> dict[str, float]:
    data = ImageTextDataModule(str(val), val_annotations=str(val), image_root=str(val.parent), image_size=32,
                               batch_size=1, eval_batch_size=1, num_workers=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=val.parent)  # fmt: skip
    return {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}


def test_an_empty_batch_is_validated_by_every_task(tmp_path: Path):
    val = _val_set(tmp_path / "data")
    llm = save_tiny_llm("opt", tmp_path / "opt")
    stage1 = tiny_blip2()
    modules = {
        "caption": CaptionFinetune(tiny_blip()),
        "itc": MEDPretrain(tiny_blip(), queue_size=16),
        "stage1": QFormerStage1(stage1),
        "stage2": QFormerStage2(Blip2LLMConfig(vision=stage1.vision, qformer=stage1.qformer, llm=str(llm))),
    }
    for name, module in modules.items():
        result = _validate(module, val)
        assert result["val/skipped_samples"] == 1.0, name
        assert all(math.isfinite(v) for v in result.values()), (name, result)
        assert ("val/loss" in result) == (name in ("caption", "stage2")), (name, result)


@pytest.mark.slow
def test_two_ranks_with_an_empty_batch_equal_one(tmp_path: Path):
    val = _val_set(tmp_path / "data")
    script = tmp_path / "validate.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"result{devices}.json"
        cmd = [sys.executable, str(script), str(devices), str(val.parent), str(out)]
        run = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert one["itc"] == pytest.approx(two["itc"], abs=1e-9)  # R@1 over the same 4 pairs, skips once
    assert one["caption"]["val/skipped_samples"] == two["caption"]["val/skipped_samples"] == 1.0
    # rank 1 pads its share with a repeat of the first pair, which the held-out loss counts
    assert math.isfinite(two["caption"]["val/loss"])
    assert two["caption"]["val/loss"] == pytest.approx(one["caption"]["val/loss"], rel=0.2)
