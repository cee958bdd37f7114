"""CapFilt's model steps and bookkeeping: filter decisions, sampling settings, chunks, per-chunk counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_blip

from lightning_blip.capfilt import filtering
from lightning_blip.capfilt.data import CapFiltCollator, ChunkBatchSampler
from lightning_blip.capfilt.filtering import (
    CaptionSettings,
    FilterSettings,
    sample_captions,
    score_texts,
    select_texts,
)
from lightning_blip.capfilt.plan import Source, make_plan
from lightning_blip.capfilt.writer import judged_chunk
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.shared.tokenizer import default_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_threshold_keeps_texts_at_or_above_it():
    prob, sim = torch.tensor([0.7, 0.5, 0.49, 0.9]), torch.zeros(4)
    assert select_texts(prob, sim, FilterSettings()) == [True, True, False, True]
    assert select_texts(prob, sim, FilterSettings(threshold=0.8)) == [False, False, False, True]
    assert select_texts(prob, sim, FilterSettings(threshold=None)) == [True] * 4


def test_top_n_ranks_the_texts_the_threshold_kept_by_itc():
    prob, sim = torch.tensor([0.7, 0.6, 0.1, 0.9]), torch.tensor([0.1, 0.3, 0.9, 0.2])
    # text 2 has the highest similarity but fails the threshold; of 0, 1, 3 the two best are 1 and 3
    assert select_texts(prob, sim, FilterSettings(top_n=2)) == [False, True, False, True]
    # BLIP-2: no ITM filter, the 2 of highest similarity; a tie goes to the earlier text
    assert select_texts(prob, sim, FilterSettings(threshold=None, top_n=2)) == [False, True, True, False]
    tied = torch.tensor([0.5, 0.5, 0.5])
    assert select_texts(torch.ones(3), tied, FilterSettings(top_n=1)) == [True, False, False]


def test_each_text_is_judged_on_its_own_against_its_own_image():
    model = BlipModel(tiny_blip()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    texts = [["A web text!", "a synthetic caption", "another one"], ["only the web text"]]
    itm, itc = score_texts(model, pixels, texts)
    assert [t.shape for t in itm] == [torch.Size([3]), torch.Size([1])]
    for i, group in enumerate(texts):
        for j, text in enumerate(group):
            normalised = "a web text" if text == "A web text!" else text  # pre_caption
            alone = model.itm_score(pixels[i : i + 1], [normalised])
            assert itm[i][j] == pytest.approx(float(alone[0]), abs=1e-5)
            assert itc[i][j] == pytest.approx(
                float(model.itc_similarity(pixels[i : i + 1], [normalised])), abs=1e-5
            )


def test_sampling_settings_reach_the_decoder(monkeypatch):
    calls = {}

    def fake_generate(model, image_embeds, prompt_ids, **kwargs):
        calls.update(kwargs, image_embeds=image_embeds, prompt_ids=prompt_ids)
        return torch.cat([prompt_ids, torch.full((len(prompt_ids), 1), 2003)], dim=1)  # + "is"

    monkeypatch.setattr(filtering, "generate_ids", fake_generate)
    model, tokenizer = BlipModel(tiny_blip()).eval(), default_tokenizer()
    generator = torch.Generator()
    captions = sample_captions(
        model, torch.randn(2, 3, 32, 32), tokenizer, CaptionSettings(num_captions=3), generator
    )
    assert captions == [["is"] * 3] * 2
    assert {k: calls[k] for k in ("do_sample", "top_p", "top_k", "min_length", "max_length", "repetition_penalty")} == {
        "do_sample": True, "top_p": 0.9, "top_k": 50, "min_length": 5, "max_length": 20, "repetition_penalty": 1.1
    }  # fmt: skip
    assert calls["generator"] is generator
    prompt = tokenizer("a picture of ").input_ids[:-1]  # [CLS] a picture of, no [SEP]
    assert calls["prompt_ids"].tolist() == [prompt] * 6
    embeds = calls["image_embeds"]
    assert (
        embeds.shape[0] == 6 and torch.equal(embeds[0], embeds[2]) and not torch.equal(embeds[2], embeds[3])
    )


def test_equal_seeds_give_equal_captions():
    model, tokenizer = BlipModel(tiny_blip()).eval(), default_tokenizer()
    pixels, settings = torch.randn(2, 3, 32, 32), CaptionSettings(num_captions=2, max_length=8)
    first, second, other = (
        sample_captions(model, pixels, tokenizer, settings, torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    )
    assert first == second != other and all(len(c) == 2 for c in first)


def test_chunks_split_files_and_ranks_share_them_without_overlap(tmp_path: Path):
    for name, n in (("a-0.jsonl", 5), ("a-1.jsonl", 2)):
        lines = [json.dumps({"image": f"{name}{i}.png", "caption": "x"}) for i in range(n)]
        (tmp_path / name).write_text("\n".join(lines + ["[1, 2]"]) + "\n")  # one malformed record each
    (tmp_path / "broken.json").write_text("{not json")
    plan = make_plan(
        [Source("a", [str(tmp_path / "a-*.jsonl"), str(tmp_path / "broken.json")])], shard_size=2
    )
    assert [(c.start, c.stop) for c in plan.chunks] == [(0, 2), (2, 4), (4, 5), (5, 7)]
    assert plan.skipped == {"a": {"malformed_records": 2, "unreadable_files": 1}}
    batches = [list(ChunkBatchSampler(plan.chunks, 3, rank, 2)) for rank in (0, 1)]
    assert batches == [[[0, 1], [4]], [[2, 3], [5, 6]]]
    collate = CapFiltCollator(plan.chunks, batch_size=1)
    items = [
        {"index": 5, "image": None, "captions": ("x",)},
        {"index": 6, "image": torch.zeros(3, 2, 2), "captions": ("y",)},
    ]
    batch = collate(items)
    assert (batch["chunk"], batch["batch"], batch["index"], batch["corrupt"]) == (3, 0, [6], [5])
    assert collate(items[1:])["batch"] == 1


def test_counts_of_a_judged_chunk(tmp_path: Path):
    records = [
        {"image": f"{i}.png", "caption": ["web a", "web b"] if i == 0 else "web", "image_id": i}
        for i in range(4)
    ]
    (tmp_path / "web.json").write_text(json.dumps(records))
    plan = make_plan([Source("web", [str(tmp_path / "web.json")])], shard_size=4)
    judged = {
        0: {"texts": ["web a", "web b", "syn"], "num_web": 2, "keep": [True, False, True]},
        1: {"texts": ["web", "syn"], "num_web": 1, "keep": [False, False]},
        2: None,  # unreadable image
        3: {"texts": ["web", "syn"], "num_web": 1, "keep": [False, True]},
    }
    rows, counts = judged_chunk(plan, plan.chunks[0], judged)
    assert rows == [
        {
            "image": "0.png",
            "caption": ["web a", "syn"],
            "image_id": "0",
            "caption_origin": ["web", "synthetic"],
        },
        {"image": "3.png", "caption": ["syn"], "image_id": "3", "caption_origin": ["synthetic"]},
    ]
    assert counts == {"images_in": 4, "texts_in": 5, "web_kept": 1, "synthetic_generated": 3, "synthetic_kept": 2,
                      "human_kept": 0, "images_no_text_left": 1, "corrupt_images": 1}  # fmt: skip


def test_the_plan_reads_records_one_file_at_a_time(tmp_path: Path):
    """The plan keeps no records: each is read from its file when asked for, one file held at a time."""
    import pickle

    from lightning_blip.data.annotations import load_annotations

    for k in range(3):
        rows = [{"image": f"{k}-{i}.png", "caption": f"file {k} image {i}"} for i in range(k + 2)]
        (tmp_path / f"web-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = make_plan([Source("web", [str(tmp_path / "web-*.jsonl")])], shard_size=2)
    expected = load_annotations(sorted(tmp_path.glob("web-*.jsonl")))[0]
    assert len(plan.records) == len(expected) == 9
    assert [plan.records[i] for i in range(9)] == expected == plan.records[0:9]
    assert plan.records._held[0] == 2  # the last file read, and only it
    assert pickle.loads(pickle.dumps(plan.records))._held is None  # a worker reads its own files
    with pytest.raises(IndexError):
        plan.records[9]
