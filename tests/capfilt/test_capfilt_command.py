"""``lightning_blip capfilt`` end to end on tiny random models: output, statistics, kill and restart, 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capfilt_data import recipe_args, save_tiny_blip, write_inputs

from lightning_blip.capfilt.command import check_settings, main
from lightning_blip.capfilt.plan import Source, input_files
from lightning_blip.data.annotations import load_annotations
from lightning_blip.models.blip import BlipModel

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "capfilt.yaml")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Inputs, tiny captioner and filter, and one uninterrupted in-process run to compare with."""
    root = tmp_path_factory.mktemp("capfilt")
    inputs = write_inputs(root / "inputs")
    captioner, filter_ = (
        save_tiny_blip(root / "captioner", 1),
        save_tiny_blip(root / "filter", 2, itm_scale=300),
    )
    args = ["-c", RECIPE, *recipe_args(inputs, captioner, filter_, root / "reference")]
    return {
        "root": root,
        "inputs": inputs,
        "args": args,
        "stats": main(args),
        "reference": root / "reference",
    }


def _outputs(out: Path) -> dict[str, str]:
    """Every output file's text, the folder's own path (in data.yaml) replaced."""
    return {p.name: p.read_text().replace(str(out), "OUT") for p in sorted(out.iterdir())}


def _command(setup: dict, out: Path, *extra: str) -> list[str]:
    args = [a.replace(str(setup["reference"]), str(out)) for a in setup["args"]]
    return [
        sys.executable,
        "-m",
        "lightning_blip",
        "capfilt",
        *args,
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # same kernels as in-process


@pytest.mark.filterwarnings("error::DeprecationWarning")  # e.g. a renamed jsonargparse method
def test_statistics_count_every_record(setup: dict):
    web, human = setup["stats"]["sources"]["web"], setup["stats"]["sources"]["human"]
    # 10 readable images + 1 unreadable, one malformed JSONL line, one synthetic caption per readable image
    assert (
        web["images_in"] == web["texts_in"] == 11 and web["corrupt_images"] == web["malformed_records"] == 1
    )
    assert web["synthetic_generated"] == 10 and web["human_kept"] == 0
    assert 0 < web["web_kept"] < 10 and 0 < web["synthetic_kept"] <= 10  # the filter keeps some, drops some
    rows = [json.loads(line) for name in setup["stats"]["shards"]
            for line in (setup["reference"] / name).read_text().splitlines()]  # fmt: skip
    web_rows = [r for r in rows if "human" not in r["caption_origin"]]
    assert len(web_rows) == 10 - web["images_no_text_left"]
    assert sum(r["caption_origin"].count("web") for r in web_rows) == web["web_kept"]
    assert sum(r["caption_origin"].count("synthetic") for r in web_rows) == web["synthetic_kept"]
    # human-annotated records pass through unfiltered
    assert human == {
        **human,
        "images_in": 4,
        "texts_in": 8,
        "human_kept": 8,
        "web_kept": 0,
        "synthetic_kept": 0,
    }
    source = json.loads(setup["inputs"]["human"].read_text())
    assert [(r["image"], r["caption"]) for r in rows if "human" in r["caption_origin"]] == [
        (r["image"], r["caption"]) for r in source
    ]


def test_output_is_an_annotation_set_for_fit(setup: dict):
    data = __import__("yaml").safe_load((setup["reference"] / "data.yaml").read_text())["data"]["init_args"]
    records, malformed = load_annotations(data["train_annotations"])
    assert malformed == 0 and len(records) == sum(1 for _ in records)
    assert data["image_root"] == str(setup["inputs"]["image_root"])
    assert not list(setup["reference"].glob("*.tmp"))


def test_output_trains_with_lightning_blip_fit(setup: dict, tmp_path: Path):
    from lightning_blip.cli import BlipCLI

    cli = BlipCLI(
        args=["-c", str(REPO / "recipes" / "blip_pretrain.yaml"), "-c", str(REPO / "tests" / "tiny.yaml"),
              "-c", str(setup["reference"] / "data.yaml"), "--data.init_args.num_workers=0",
              "--data.init_args.batch_size=4", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
              "--trainer.max_steps=1", "--trainer.limit_val_batches=0"],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1


def test_the_progress_bar_shows_images_per_second(setup: dict, tmp_path: Path, capsys):
    out = tmp_path / "bar"
    main(
        [a.replace(str(setup["reference"]), str(out)) for a in setup["args"]]
        + ["--trainer.enable_progress_bar=true"]
    )
    assert "images/s=" in capsys.readouterr().out  # Lightning's bar writes to stdout


def test_a_restart_with_other_settings_is_refused(setup: dict):
    with pytest.raises(ValueError, match="seed"):
        main([*setup["args"], "--seed=1"])


def test_a_misspelled_trainer_argument_fails_before_the_models_load(setup: dict, monkeypatch):
    monkeypatch.setattr(BlipModel, "from_pretrained", lambda *a, **k: pytest.fail("models loaded"))
    with pytest.raises(ValueError, match=r"unknown lightning.Trainer argument\(s\) \['precison'\]"):
        main([*setup["args"], "--trainer.precison=16-mixed"])


def test_a_restart_after_the_inputs_changed_is_refused(tmp_path: Path):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text('{"image": "x.jpg", "caption": "x"}\n')
    sources = [Source("web", [str(tmp_path / "web" / "*.jsonl")])]
    check_settings(tmp_path / "out", {"input_files": input_files(sources)})
    check_settings(tmp_path / "out", {"input_files": input_files(sources)})  # the same files: resumes
    (tmp_path / "web" / "b.jsonl").write_text('{"image": "y.jpg", "caption": "y"}\n')  # a new match
    with pytest.raises(ValueError, match="input_files"):
        check_settings(tmp_path / "out", {"input_files": input_files(sources)})
    (tmp_path / "web" / "b.jsonl").unlink()
    with (tmp_path / "web" / "a.jsonl").open("a") as f:  # records appended
        f.write('{"image": "z.jpg", "caption": "z"}\n')
    with pytest.raises(ValueError, match="input_files"):
        check_settings(tmp_path / "out", {"input_files": input_files(sources)})


def test_the_run_records_its_input_files(setup: dict):
    recorded = json.loads((setup["reference"] / "capfilt.json").read_text())["input_files"]
    assert sum(len(files) for files in recorded.values()) > 0


@pytest.mark.slow
def test_killed_and_restarted_gives_the_uninterrupted_output(setup: dict, tmp_path: Path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _command(setup, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.jsonl")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = list(out.glob("part-*.jsonl"))
    assert 1 <= len(finished) < len(setup["stats"]["shards"]) and not (out / "stats.json").exists()
    result = subprocess.run(
        _command(setup, out), check=False, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outputs(out) == _outputs(setup["reference"])


@pytest.mark.slow
def test_two_ranks_give_the_records_of_one(setup: dict, tmp_path: Path):
    out = tmp_path / "ddp"
    cmd = _command(setup, out, "--trainer.devices=2", "--trainer.strategy=ddp")
    result = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outputs(out) == _outputs(setup["reference"])


@pytest.mark.slow
def test_two_ranks_resume_with_fewer_pending_chunks_than_ranks(setup: dict, tmp_path: Path):
    """A restart with one web chunk left: the rank without a chunk predicts nothing and still meets
    the other at the barriers."""
    out = tmp_path / "resume"
    shutil.copytree(setup["reference"], out)
    web = [p for p in sorted(out.glob("part-*.stats.json")) if json.loads(p.read_text())["source"] == "web"]
    (out / web[-1].name.replace(".stats.json", ".jsonl")).unlink()
    for summary in ("stats.json", "data.yaml"):
        (out / summary).unlink()
    cmd = _command(setup, out, "--trainer.devices=2", "--trainer.strategy=ddp")
    result = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outputs(out) == _outputs(setup["reference"])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (
            "--filtering.threshold=50",
            r"filtering.threshold must be a probability in \[0, 1\], or null, got 50",
        ),
        ("--filtering.top_n=0", r"filtering.top_n must be >= 1, or null, got 0"),
        ("--captioning.num_captions=0", r"captioning.num_captions must be >= 1, got 0"),
        ("--captioning.top_p=1.5", r"captioning.top_p must be in \(0, 1\], got 1.5"),
        ("--captioning.min_length=50", r"captioning.min_length must be in \[1, max_length=\d+\], got 50"),
        ("--batch_size=0", r"batch_size must be >= 1, got 0"),
    ],
)
def test_a_bad_setting_fails_before_anything_is_written(
    setup: dict, tmp_path: Path, monkeypatch, arg, message
):
    monkeypatch.setattr(BlipModel, "from_pretrained", lambda *a, **k: pytest.fail("models loaded"))
    out = tmp_path / "bad"
    args = [a.replace(str(setup["reference"]), str(out)) for a in setup["args"]]
    with pytest.raises(ValueError, match=message):
        main([*args, arg])
    assert not out.exists()  # no capfilt.json: the corrected command may use this folder
