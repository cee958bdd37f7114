"""PredictionWriter: JSON rows and embeddings, per-rank parts merged with duplicate ids dropped."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from lightning_blip.callbacks import PredictionWriter
from lightning_blip.callbacks.prediction_writer import prediction_rows


def test_rows_keep_lists_and_rankings_and_split_off_embeddings():
    rows, embeddings = prediction_rows(
        {
            "image_id": torch.tensor([7, 8]),
            "caption": ["a dog", "a cat"],
            "ranking": torch.tensor([[3, 1], [0, 2]]),
            "image_embeds": torch.ones(2, 4),
        }
    )
    assert rows == [
        {"image_id": 7, "caption": "a dog", "ranking": [3, 1]},
        {"image_id": 8, "caption": "a cat", "ranking": [0, 2]},
    ]
    assert set(embeddings) == {"image_embeds"} and embeddings["image_embeds"].shape == (2, 4)
    with pytest.raises(ValueError, match="batch sizes"):
        prediction_rows({"image_id": [1, 2], "caption": ["a"]})


def test_merge_drops_padding_repeats_in_lines_and_embeddings(tmp_path: Path):
    writer = PredictionWriter(str(tmp_path))
    # rank 0 saw ids 0, 2, 4; rank 1 saw 1, 3 and 0 again (a distributed sampler's padding)
    for rank, ids in ((0, [0, 2, 4]), (1, [1, 3, 0])):
        writer._part("predictions", rank, "jsonl").write_text(
            "".join(json.dumps({"id": i, "answer": f"a{i}"}) + "\n" for i in ids)
        )
        save_file(
            {"text_embeds": torch.tensor(ids, dtype=torch.float)[:, None].repeat(1, 3)},
            str(writer._part("predictions", rank, "safetensors")),
        )
    out = writer.merge("predictions", world_size=2)[0]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in lines] == [0, 2, 4, 1, 3]
    saved = load_file(str(tmp_path / "predictions.safetensors"))
    assert saved["ids"].tolist() == [0, 2, 4, 1, 3]
    assert saved["text_embeds"][:, 0].tolist() == [0, 2, 4, 1, 3]
    assert not list(tmp_path.glob("*.rank*"))


def test_rows_with_a_null_id_are_all_kept_and_fall_back_to_the_next_id_key(tmp_path: Path):
    writer = PredictionWriter(str(tmp_path))
    rows = [{"question_id": None, "answer": f"a{i}"} for i in range(3)]  # questions without an id
    rows += [
        {"question_id": None, "index": 5, "answer": "b"},
        {"question_id": None, "index": 5, "answer": "b"},
    ]
    writer._part("predictions", 0, "jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    merged = writer.merge("predictions", world_size=1)[0].read_text().splitlines()
    assert [json.loads(line)["answer"] for line in merged] == ["a0", "a1", "a2", "b"]


def test_atomic_writes_from_many_processes_at_once_do_not_collide(tmp_path: Path):
    import multiprocessing

    from lightning_blip.atomic import atomic_write_text

    target = tmp_path / "settings.json"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(atomic_write_text, [(target, f"{i}\n" * 1000) for i in range(64)])
    assert len(set(target.read_text().splitlines())) == 1 and len(target.read_text().splitlines()) == 1000
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temporary file left


class _Captioner(L.LightningModule):
    def predict_step(self, batch, batch_idx):
        return {
            "image_id": batch,
            "caption": [f"caption {int(i)}" for i in batch],
            "image_embeds": batch[:, None].float().repeat(1, 2),
        }


def test_trainer_predict_writes_one_line_per_input(tmp_path: Path):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[PredictionWriter(str(tmp_path))],
    )
    trainer.predict(_Captioner(), DataLoader(torch.arange(10), batch_size=4), return_predictions=False)
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert lines == [{"image_id": i, "caption": f"caption {i}"} for i in range(10)]
    assert load_file(str(tmp_path / "predictions.safetensors"))["image_embeds"].shape == (10, 2)


def _predict(writer: PredictionWriter, root: Path, n: int = 3) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(root),
        callbacks=[writer],
    )
    trainer.predict(_Captioner(), DataLoader(torch.arange(n), batch_size=2), return_predictions=False)


def test_default_folder_is_the_runs_and_overwrite_must_be_asked_for(tmp_path: Path, capsys):
    _predict(PredictionWriter(), tmp_path)
    out = tmp_path / "predictions"
    assert f"predictions written to {out / 'predictions.jsonl'}" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="predictions.jsonl"):
        _predict(PredictionWriter(), tmp_path, n=5)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    _predict(PredictionWriter(overwrite=True), tmp_path, n=5)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5


def test_a_stream_without_rows_writes_no_file(tmp_path: Path):
    writer = PredictionWriter(str(tmp_path))
    writer._part("texts", 0, "jsonl").write_text("")
    assert writer.merge("texts", world_size=1) == [] and list(tmp_path.iterdir()) == []
