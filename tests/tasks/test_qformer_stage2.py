"""QFormerStage2 glue: stage-1 initialisation, frozen parts out of checkpoints, FSDP2 = DDP on 2 CPU ranks."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_blip2
from fake_data import write_fake_dataset

from lightning_blip.data import ImageTextDataModule
from lightning_blip.models.blip2 import Blip2ForGeneration, Blip2LLMConfig
from lightning_blip.models.blip2.small_llm import save_tiny_llm
from lightning_blip.tasks import QFormerStage1, QFormerStage2
from lightning_blip.weights.distributed import consolidate

REPO = Path(__file__).resolve().parents[2]
FROZEN = ("model.llm.", "model.image_encoder.visual_encoder.")


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory) -> Path:
    return save_tiny_llm("opt", tmp_path_factory.mktemp("llm") / "opt")


def _config(llm: Path, **kw) -> Blip2LLMConfig:
    stage1 = tiny_blip2()
    return Blip2LLMConfig(vision=stage1.vision, qformer=stage1.qformer, llm=str(llm), **kw)


def _datamodule(tmp_path, n: int = 16) -> ImageTextDataModule:
    annotations = write_fake_dataset(tmp_path / "images", num_images=n)
    return ImageTextDataModule(
        str(annotations), image_root=str(annotations.parent), image_size=32, batch_size=4, num_workers=0
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    base = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return L.Trainer(**{**base, "enable_model_summary": False, "default_root_dir": tmp_path, **kw})


def test_stage1_checkpoint_initialises_the_qformer_and_frozen_parts_stay_out(tmp_path, opt_dir):
    stage1 = QFormerStage1(tiny_blip2())
    trainer = _trainer(tmp_path / "s1", max_steps=1, limit_val_batches=0)
    trainer.fit(stage1, datamodule=_datamodule(tmp_path))
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")

    module = QFormerStage2(_config(opt_dir, stage1_checkpoint=str(tmp_path / "stage1.ckpt")))
    image_embeds = torch.randn(2, 5, 48)
    stage1.eval(), module.eval()
    expected = stage1.model.blip2.qformer(image_embeds=image_embeds).last_hidden_state
    torch.testing.assert_close(module.model.qformer(image_embeds=image_embeds).last_hidden_state, expected)

    trainer = _trainer(tmp_path / "s2", max_steps=2, limit_val_batches=0)
    llm_before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(FROZEN)}
    trainer.fit(module, datamodule=_datamodule(tmp_path))
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised for n, p in module.named_parameters() if n.startswith(FROZEN))
    for key, value in module.state_dict().items():
        if key.startswith(FROZEN):
            torch.testing.assert_close(value, llm_before[key])
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    checkpoint = torch.load(tmp_path / "stage2.ckpt", weights_only=True)
    assert not any(k.startswith(FROZEN) for k in checkpoint["state_dict"])
    assert checkpoint["frozen_weights"]["sources"]["model.llm."] == str(opt_dir)
    restored = QFormerStage2.load_from_checkpoint(tmp_path / "stage2.ckpt", weights_only=True)
    for key, value in module.state_dict().items():  # the LLM comes back from its directory
        if not key.startswith(FROZEN[1]):  # the tiny ViT has no weights file: a new random init
            torch.testing.assert_close(restored.state_dict()[key], value, msg=key)


STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp2": [
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1",
    ],
}
DETERMINISTIC = """
trainer:
  max_steps: 2
  log_every_n_steps: 1
  num_sanity_val_steps: 0
model:
  init_args:
    config:
      qformer: {dropout: 0.0, attention_dropout: 0.0}
"""


def _run(strategy: str, tmp_path: Path, annotations: Path, llm: Path) -> tuple[list[dict], Path]:
    override = tmp_path / "deterministic.yaml"
    override.write_text(DETERMINISTIC)
    out = tmp_path / strategy
    cmd = [
        sys.executable, "-m", "lightning_blip", "fit",
        "-c", str(REPO / "recipes" / "blip2_stage2_opt.yaml"), "-c", str(REPO / "tests" / "tiny_blip2.yaml"),
        "-c", str(override), "--trainer.devices=2", *STRATEGIES[strategy],
        f"--model.init_args.config.llm={llm}",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={out}", f"--trainer.default_root_dir={out}",
        f"--data.init_args.train_annotations=[{annotations}]", f"--data.init_args.image_root={annotations.parent}",
    ]  # fmt: skip
    result = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(next(out.rglob("metrics.csv"))) as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/loss")]
    return rows, next(out.rglob("last.ckpt"))


@pytest.mark.slow
def test_fsdp2_with_the_llm_sharded_matches_ddp_and_its_checkpoint_consolidates(tmp_path, opt_dir):
    annotations = write_fake_dataset(tmp_path / "images", num_images=32)
    ddp, ddp_ckpt = _run("ddp", tmp_path, annotations, opt_dir)
    fsdp, fsdp_ckpt = _run("fsdp2", tmp_path, annotations, opt_dir)
    assert [r["step"] for r in ddp] == [r["step"] for r in fsdp] == ["0", "1"]
    for a, b in zip(ddp, fsdp):
        assert float(a["train/loss"]) == pytest.approx(float(b["train/loss"]), rel=1e-5), a["step"]

    assert fsdp_ckpt.is_dir()  # a distributed checkpoint: one shard per rank
    single = consolidate(fsdp_ckpt, tmp_path / "consolidated.ckpt")
    restored = QFormerStage2.load_from_checkpoint(single, weights_only=True)
    reference = torch.load(ddp_ckpt, weights_only=True)["state_dict"]
    assert not any(k.startswith(FROZEN) for k in torch.load(single, weights_only=True)["state_dict"])
    state = restored.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-4, msg=key)
    for source in (fsdp_ckpt, single):  # the model alone, from the shard directory or the merged file
        model = Blip2ForGeneration.from_pretrained(source)
        own = model.state_dict()
        for key, value in reference.items():
            torch.testing.assert_close(own[key.removeprefix("model.")], value, atol=1e-5, rtol=1e-4, msg=key)


def test_a_misspelled_generation_option_fails_when_the_module_is_built(opt_dir):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_new_token'\]"):
        QFormerStage2(_config(opt_dir), generate_kwargs={"max_new_token": 8})
