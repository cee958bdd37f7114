"""transformers' BLIP checkpoints loaded into our BlipModel compute the same numbers.

Tiny random transformers models are saved with ``save_pretrained`` and loaded through
:func:`load_transformers_blip`; every comparison is against transformers' own forward, fp32, eval.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from conftest import text_batch, tiny_text, tiny_vision

from lightning_blip.cli import main as cli_main
from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.shared.generation import generate_ids
from lightning_blip.weights.transformers_blip import load_transformers_blip

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def hf_config(vision_eps: float | None = 1e-6) -> transformers.BlipConfig:
    """Matches :func:`our_model`; vision eps 1e-6 as BLIP's ViT, or None: transformers' default (1e-5,
    as the released BLIP configs)."""
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "num_hidden_layers": 2,
        "hidden_size": 48,
        "intermediate_size": 192,
        "num_attention_heads": 4,
    }
    if vision_eps is not None:
        vision["layer_norm_eps"] = vision_eps
    text = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 30524,
        "encoder_hidden_size": 48,
    }
    return transformers.BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=32)


def our_model(config: BlipConfig | None = None) -> BlipModel:
    """Default: :func:`hf_config`'s sizes with BLIP's vision eps."""
    model = BlipModel(config or BlipConfig(vision=tiny_vision(), text=tiny_text(), embed_dim=32))
    with torch.no_grad():  # so that a weight left unloaded cannot go unnoticed
        for p in model.parameters():
            p.fill_(0.5)
    return model.eval()


@torch.no_grad()
def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """transformers initialises BLIP's ViT at ~1e-10: give every weight a visible random value."""
    for name, p in model.named_parameters():
        noise = torch.randn_like(p) * 0.1
        p.copy_(1 + noise if "norm" in name.lower() and name.endswith("weight") else noise)
    return model.eval()


@pytest.fixture(scope="module")
def retrieval_pair(tmp_path_factory):
    torch.manual_seed(1)
    hf = randomise(transformers.BlipForImageTextRetrieval(hf_config()))
    path = tmp_path_factory.mktemp("retrieval")
    hf.save_pretrained(path)
    ours = our_model()
    report = load_transformers_blip(ours, path)
    return hf, ours, report, path


@pytest.fixture(scope="module")
def caption_pair(tmp_path_factory):
    """transformers' default vision eps (1e-5): our config takes it from config.json."""
    from lightning_blip.models.blip.pretrained import blip_config_from_transformers

    torch.manual_seed(2)
    hf = randomise(transformers.BlipForConditionalGeneration(hf_config(vision_eps=None)))
    assert hf.config.vision_config.layer_norm_eps == 1e-5
    path = tmp_path_factory.mktemp("caption")
    hf.save_pretrained(path)
    ours = our_model(blip_config_from_transformers(path)[0])
    report = load_transformers_blip(ours, path)
    return hf, ours, report, path


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_retrieval_report_names_expected_absent(retrieval_pair):
    report = retrieval_pair[2]
    assert report.missing == [] and report.unexpected == []
    assert "text.layers.0.decoder_self_attn.attention.query.weight" in report.missing_expected
    assert "lm_head.dense.weight" in report.missing_expected and "temp" in report.missing_expected
    assert "text.layers.1.self_attn.attention.kv.key.weight" in report.loaded
    # lm_head.decoder.weight is the word embedding matrix (tied): the only LM-head name loaded
    decoder_side = [k for k in report.loaded if k.startswith("lm_head") or "decoder_self_attn" in k]
    assert decoder_side == ["lm_head.decoder.weight"]


def test_caption_report_names_expected_absent(caption_pair):
    report = caption_pair[2]
    assert report.missing == [] and report.unexpected == []
    assert "itm_head.weight" in report.missing_expected
    assert "text.layers.0.self_attn.dense.weight" in report.missing_expected
    assert {"lm_head.decoder.weight", "lm_head.decoder.bias", "lm_head.norm.weight"} <= set(report.loaded)


def test_image_embeddings_match(retrieval_pair):
    hf, ours, *_ = retrieval_pair
    pixels = images()
    expected = hf.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours.forward_image(pixels), expected, atol=ATOL, rtol=0)


def test_itc_similarity_matches(retrieval_pair):
    hf, ours, *_ = retrieval_pair
    pixels = images()
    ids, mask = text_batch(batch=3)
    expected = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score
    sim = ours.similarity(ours.encode_image(pixels), ours.encode_text(ids, mask))
    torch.testing.assert_close(sim, expected, atol=ATOL, rtol=0)


def test_itm_logits_match_when_transformers_gets_enc(retrieval_pair):
    """Ours replaces [CLS] by [ENC]; transformers uses the ids as given: give it [ENC] first."""
    hf, ours, *_ = retrieval_pair
    pixels = images()
    ids, mask = text_batch(batch=3)
    ours_logits = ours.itm_logits(ids, mask, image_embeds=ours.forward_image(pixels))
    enc_ids = ids.clone()
    enc_ids[:, 0] = ours.config.enc_token_id
    expected = hf(input_ids=enc_ids, pixel_values=pixels, attention_mask=mask).itm_score
    torch.testing.assert_close(ours_logits, expected, atol=ATOL, rtol=0)
    # and the [CLS] that transformers' processor would feed gives other scores
    with_cls = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask).itm_score
    assert not torch.allclose(ours_logits, with_cls, atol=1e-3)


def assert_same_lm_logits(ours: BlipModel, hf_captioner) -> None:
    """Our LM logits equal a transformers ``BlipForConditionalGeneration``'s on padded captions."""
    pixels = images()
    ids, mask = text_batch(batch=3)
    ids[:, 0] = ours.config.bos_token_id  # transformers' forward uses the ids as given
    expected = hf_captioner(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
    logits = ours.lm_logits(ids, mask, image_embeds=ours.forward_image(pixels))
    torch.testing.assert_close(logits * mask[..., None], expected * mask[..., None], atol=ATOL, rtol=0)


def test_lm_logits_match(caption_pair):
    hf, ours, *_ = caption_pair
    assert_same_lm_logits(ours, hf)


def test_image_embeddings_match_with_transformers_default_vision_eps(caption_pair):
    hf, ours, *_ = caption_pair
    pixels = images()
    expected = hf.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours.forward_image(pixels), expected, atol=ATOL, rtol=0)


def test_export_keeps_the_vision_eps_of_the_source(caption_pair, tmp_path):
    from lightning_blip.convert.export_blip import export_transformers_blip

    hf, ours, *_ = caption_pair
    export_transformers_blip(ours, tmp_path, "captioning")
    again = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.vision_config.layer_norm_eps == 1e-5
    pixels = images()
    torch.testing.assert_close(
        again.vision_model(pixel_values=pixels).last_hidden_state,
        hf.vision_model(pixel_values=pixels).last_hidden_state,
        atol=ATOL,
        rtol=0,
    )


def until_sep(ids: torch.Tensor, width: int, sep: int = 102, pad: int = 0) -> torch.Tensor:
    """Everything after the first [SEP] set to [PAD] (transformers may pad with [SEP]), ``width`` wide."""
    ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)
    after_sep = (ids == sep).long().cumsum(1) - (ids == sep).long() > 0
    return ids.masked_fill(after_sep, pad)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("sep_boost", [0.0, 6.0])
def test_captions_match(caption_pair, num_beams, sep_boost):
    """Same ids from greedy and beam search; ``sep_boost`` on [SEP]'s logit makes captions end at
    ``min_length`` or later (without it they all run to ``max_length``)."""
    hf, ours, *_ = caption_pair
    pixels = images(4)
    prompt = torch.tensor([[101, 1037, 3861, 1997, 102]] * 4)  # [CLS] a picture of [SEP]
    settings = {"num_beams": num_beams, "max_length": 12, "min_length": 7}
    if num_beams > 1:  # 0: transformers 5 counts a hypothesis's length differently from 4.15 (ours)
        settings["length_penalty"] = 0.0
    biases = (hf.text_decoder.cls.predictions.bias, ours.lm_head.decoder.bias)
    saved = [bias[102].clone() for bias in biases]  # restored exactly: the models are shared
    with torch.no_grad():
        for bias in biases:
            bias[102] += sep_boost
    try:
        expected = hf.generate(pixel_values=pixels, input_ids=prompt.clone(), do_sample=False, **settings)
        got = generate_ids(ours, ours.forward_image(pixels), prompt[:, :-1], **settings)
    finally:
        with torch.no_grad():
            for bias, value in zip(biases, saved):
                bias[102] = value
    width = max(got.shape[1], expected.shape[1])
    assert torch.equal(until_sep(got, width), until_sep(expected, width))
    ended = (got == 102).any(1)
    assert ended.all() if sep_boost else not ended.any()


def test_older_layout_with_tied_copies_and_position_ids(caption_pair):
    """Checkpoints of older transformers versions also hold the tied LM-head copies and a buffer."""
    hf, ours, *_ = caption_pair
    state = dict(hf.state_dict())  # has cls.predictions.decoder.weight/bias, tied duplicates
    state["text_decoder.bert.embeddings.position_ids"] = torch.arange(512)[None]
    again = our_model()
    report = load_transformers_blip(again, state)
    assert sorted(report.tied) == [
        "text_decoder.cls.predictions.decoder.bias",
        "text_decoder.cls.predictions.decoder.weight",
    ]
    assert report.ignored == ["text_decoder.bert.embeddings.position_ids"]
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_convert_command_writes_a_model_that_matches(retrieval_pair, caption_pair, tmp_path):
    """``lightning_blip convert``: our config is derived from transformers' config.json."""
    for (hf, _, _, source), name in ((retrieval_pair, "retrieval"), (caption_pair, "caption")):
        cli_main(["convert", "--from", "transformers", "--to", "ours", str(source), str(tmp_path / name)])
    out = tmp_path / "retrieval"
    config = BlipConfig.from_dict(json.loads((out / "config.json").read_text()))
    summary = json.loads((out / "conversion.json").read_text())
    assert summary["missing"] == [] and "lm_head.dense.weight" in summary["missing_expected"]
    assert summary["notes"] == []  # the test config sets the vision eps to BLIP's 1e-6
    model = BlipModel(config).eval()
    assert model.load_pretrained(out / "model.safetensors").ignored == []
    hf = retrieval_pair[0]
    pixels = images()
    ids, mask = text_batch(batch=3)
    expected = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score
    sim = model.similarity(model.encode_image(pixels), model.encode_text(ids, mask))
    torch.testing.assert_close(sim, expected, atol=ATOL, rtol=0)

    out = tmp_path / "caption"
    model = BlipModel(BlipConfig.from_dict(json.loads((out / "config.json").read_text()))).eval()
    model.load_pretrained(out / "model.safetensors")
    assert_same_lm_logits(model, caption_pair[0])


def test_config_from_transformers_keeps_the_vision_eps(tmp_path):
    from lightning_blip.models.blip.pretrained import blip_config_from_transformers

    hf_config(vision_eps=None).save_pretrained(tmp_path)  # transformers' default 1e-5, not BLIP's
    config, notes = blip_config_from_transformers(tmp_path)
    assert notes == [] and config.vision.layer_norm_eps == 1e-5
    model = BlipModel(config)
    norms = [m for m in model.visual_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and {m.eps for m in norms} == {1e-5}  # blocks and the final norm
    saved = asdict(config)
    del saved["vision"]["layer_norm_eps"]  # a config written before the field: timm's (BLIP's) 1e-6
    old = BlipModel(BlipConfig.from_dict(saved))
    assert {m.eps for m in old.visual_encoder.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    assert (model.visual_encoder.width, len(model.visual_encoder.vit.blocks)) == (48, 2)
    assert model.visual_encoder.vit.blocks[0].mlp.fc1.out_features == 192
    assert (config.text.hidden_size, config.text.num_layers, config.embed_dim) == (64, 2, 32)


def test_a_directory_of_sharded_torch_files_loads(caption_pair, tmp_path):
    """``pytorch_model.bin.index.json`` + ``pytorch_model-0000N-of-00002.bin``, as older transformers wrote."""
    hf, ours, report, _ = caption_pair
    state = hf.state_dict()
    keys = list(state)
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), 1):
        shard = f"pytorch_model-0000{n}-of-00002.bin"
        torch.save({k: state[k].contiguous() for k in part}, tmp_path / shard)
        weight_map |= dict.fromkeys(part, shard)
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    hf.config.save_pretrained(tmp_path)
    loaded = BlipModel.from_pretrained(tmp_path).state_dict()
    for key in report.loaded:
        assert torch.equal(loaded[key], ours.state_dict()[key]), key


def test_from_pretrained_reads_the_transformers_directories(retrieval_pair, caption_pair):
    for hf, ours, _, path in (retrieval_pair, caption_pair):
        model = BlipModel.from_pretrained(path).eval()
        state = ours.state_dict()
        loaded = load_transformers_blip(BlipModel(model.config), path).loaded
        for key in loaded:
            torch.testing.assert_close(model.state_dict()[key], state[key], atol=0, rtol=0, msg=key)
        torch.testing.assert_close(
            model.forward_image(images()),
            hf.vision_model(pixel_values=images()).last_hidden_state,
            atol=ATOL,
            rtol=0,
        )
