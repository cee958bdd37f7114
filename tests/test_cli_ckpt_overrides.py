"""`validate/test/predict --ckpt_path=...`: command-line model settings win over the checkpoint's
hyper-parameters; one that changes the architecture fails naming itself and both values."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from fake_data import write_fake_caption_eval, write_fake_dataset

from lightning_blip.cli import BlipCLI
from lightning_blip.models.blip import BlipModel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list[str], Path, Path]:
    """A tiny captioner trained one step by `fit` (recipe: 3 beams, max 20 tokens): (common args,
    its checkpoint, Karpathy-style references)."""
    root = tmp_path_factory.mktemp("caption")
    train = write_fake_dataset(root / "images", num_images=4)
    common = [
        "-c",
        str(REPO / "recipes" / "caption_coco.yaml"),
        "-c",
        str(REPO / "tests" / "tiny_finetune.yaml"),
        f"--data.init_args.image_root={train.parent}",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    fit = ["fit", *common, f"--data.init_args.train_annotations=[{train}]", "--trainer.max_steps=1"]
    BlipCLI(args=fit)
    (ckpt,) = (root / "checkpoints").glob("*.ckpt")
    return common, ckpt, write_fake_caption_eval(train)


def test_generation_settings_on_the_command_line_are_used(trained, monkeypatch):
    common, ckpt, references = trained
    used = []
    generate = BlipModel.generate

    @functools.wraps(generate)  # generate_kwargs are checked against its signature
    def spy(self, pixel_values, tokenizer, prompt, **kwargs):
        used.append({"prompt": prompt, **kwargs})
        return generate(self, pixel_values, tokenizer, prompt, **kwargs)

    monkeypatch.setattr(BlipModel, "generate", spy)
    new = {"num_beams": 1, "max_length": 7, "min_length": 2}
    cli = BlipCLI(
        args=[
            "predict",
            *common,
            f"--data.init_args.test_annotations=[{references}]",
            f"--ckpt_path={ckpt}",
            "--model.init_args.generate_kwargs={num_beams: 1, max_length: 7, min_length: 2}",
            "--model.init_args.prompt=a photo of ",  # `--model.<field>` is short for init_args
        ]
    )
    assert cli.model.hparams.generate_kwargs == new and cli.model.prompt == "a photo of "
    assert used and all({k: kwargs[k] for k in new} == new for kwargs in used)
    assert all(kwargs["prompt"] == "a photo of " for kwargs in used)


def test_a_width_that_does_not_fit_the_checkpoint_fails_naming_it(trained):
    common, ckpt, references = trained
    args = ["test", *common, f"--data.init_args.test_annotations=[{references}]", f"--ckpt_path={ckpt}"]
    with pytest.raises(ValueError) as error:
        BlipCLI(args=[*args, "--model.init_args.config.text.hidden_size=128"])
    message = str(error.value)
    assert "--model.init_args.config.text.hidden_size=128 (the checkpoint's: 64)" in message
    assert "(30524, 64) in the checkpoint, (30524, 128) in the model" in message
