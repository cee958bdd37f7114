"""The quickstart command end to end, shortened: data written, evaluation, training, plot."""

from __future__ import annotations

from pathlib import Path

from lightning_blip.demos.quickstart import main

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_reports(tmp_path, capsys):
    result = main(
        ["--recipe", str(REPO / "recipes" / "quickstart.yaml"), "--output-dir", str(tmp_path),
         "-c", str(REPO / "tests" / "tiny.yaml"),
         "--trainer.max_steps=3", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1",
         "--data.init_args.num_workers=0"]
    )  # fmt: skip
    assert (tmp_path / "data" / "train.json").is_file() and (
        tmp_path / "loss_curve.png"
    ).stat().st_size > 1000
    for when in ("before", "after"):
        assert set(result[when]) == {"i2t_r1", "t2i_r1", "chance"}
    assert 0.02 < result["before"]["chance"] < 0.1  # 24 (size x colour x shape) captions, unevenly used
    assert len(result["captions"]) == 6 and all(len(pair) == 2 for pair in result["captions"])
    assert len(result["losses"]["train/loss_lm"]) == 3
    out = capsys.readouterr().out
    assert "image->text R@1" in out and "loss curve" in out
