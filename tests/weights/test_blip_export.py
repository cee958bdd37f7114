"""Our BlipModel exported to transformers: ``from_pretrained`` loads every key and computes our numbers.

The exported directories are read by transformers' own loader; every comparison is against its
forward or ``generate``, fp32, eval.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import convert_ours_to_transformers, text_batch, tiny_blip, tiny_vision
from test_blip_transformers_parity import assert_same_lm_logits, images, randomise, until_sep

from lightning_blip.convert import command as convert
from lightning_blip.convert.export_blip import export_transformers_blip
from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.shared.generation import generate_ids

transformers = pytest.importorskip("transformers")

ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ours() -> BlipModel:
    torch.manual_seed(5)
    return randomise(BlipModel(tiny_blip()))


def load_exported(cls, path):
    hf, info = cls.from_pretrained(path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    return hf.eval()


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    export_transformers_blip(ours, root / "caption", "captioning")
    export_transformers_blip(ours, root / "retrieval", "retrieval")
    caption = load_exported(transformers.BlipForConditionalGeneration, root / "caption")
    retrieval = load_exported(transformers.BlipForImageTextRetrieval, root / "retrieval")
    return caption, retrieval, root


def test_config_has_blip_vit_eps_and_our_sizes(exported):
    config = json.loads((exported[2] / "caption" / "config.json").read_text())
    assert config["architectures"] == ["BlipForConditionalGeneration"]
    vision, text = config["vision_config"], config["text_config"]
    assert vision["layer_norm_eps"] == 1e-6
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["intermediate_size"]) == (48, 2, 192)
    assert (vision["image_size"], vision["patch_size"], vision["num_attention_heads"]) == (32, 8, 4)
    assert (text["hidden_size"], text["encoder_hidden_size"], text["bos_token_id"]) == (64, 48, 30522)
    assert config["image_text_hidden_size"] == 32


def test_tied_lm_head_is_written_once_and_retied(exported, ours):
    caption, _, root = exported
    from safetensors import safe_open

    with safe_open(str(root / "caption" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "text_decoder.cls.predictions.decoder.weight" not in keys
    assert "text_decoder.cls.predictions.bias" in keys
    head = caption.text_decoder.cls.predictions.decoder.weight
    assert head.data_ptr() == caption.text_decoder.bert.embeddings.word_embeddings.weight.data_ptr()
    torch.testing.assert_close(head.detach(), ours.text.embeddings.word_embeddings.weight.detach())


def test_retrieval_itc_and_itm_match(exported, ours):
    retrieval = exported[1]
    pixels = images()
    ids, mask = text_batch(batch=3)
    sim = ours.similarity(ours.encode_image(pixels), ours.encode_text(ids, mask))
    expected = retrieval(
        input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False
    ).itm_score
    torch.testing.assert_close(sim, expected, atol=ATOL, rtol=0)
    enc_ids = ids.clone()
    enc_ids[:, 0] = ours.config.enc_token_id  # transformers' ITM uses the ids as given
    expected = retrieval(input_ids=enc_ids, pixel_values=pixels, attention_mask=mask).itm_score
    torch.testing.assert_close(
        ours.itm_logits(ids, mask, ours.forward_image(pixels)), expected, atol=ATOL, rtol=0
    )


def test_lm_logits_match(exported, ours):
    assert_same_lm_logits(ours, exported[0])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_captions_match(exported, ours, num_beams):
    caption = exported[0]
    pixels = images(4)
    prompt = torch.tensor([[101, 1037, 3861, 1997, 102]] * 4)  # [CLS] a picture of [SEP]
    settings = {"num_beams": num_beams, "max_length": 12, "min_length": 7, "length_penalty": 0.0}
    expected = caption.generate(pixel_values=pixels, input_ids=prompt.clone(), do_sample=False, **settings)
    got = generate_ids(ours, ours.forward_image(pixels), prompt[:, :-1], **settings)
    width = max(got.shape[1], expected.shape[1])
    assert torch.equal(until_sep(got, width), until_sep(expected, width))


def test_round_trip_through_transformers_restores_every_weight(exported, ours, tmp_path):
    """export -> ``convert --from transformers --to ours``: every weight the task's checkpoint holds
    comes back bit for bit; the rest (the other task's, ``temp``) are reported absent as expected."""
    root = exported[2]
    own = ours.state_dict()
    for task in ("caption", "retrieval"):
        convert.main(["--from", "transformers", "--to", "ours", str(root / task), str(tmp_path / task)])
        summary = json.loads((tmp_path / task / "conversion.json").read_text())
        assert summary["missing"] == [] and set(summary["loaded"]) | set(summary["missing_expected"]) == set(
            own
        )
        back = BlipModel(BlipConfig.from_dict(json.loads((tmp_path / task / "config.json").read_text())))
        back.load_pretrained(tmp_path / task / "model.safetensors")
        for key in summary["loaded"]:
            assert torch.equal(back.state_dict()[key], own[key]), key
        assert len(summary["loaded"]) > 60


def test_cli_ours_to_transformers(ours, tmp_path):
    """``convert --from ours --to transformers --task retrieval`` on a directory of ours."""
    convert_ours_to_transformers(ours, tmp_path, "retrieval")
    hf = load_exported(transformers.BlipForImageTextRetrieval, tmp_path / "hf")
    pixels = images()
    ids, mask = text_batch(batch=3)
    expected = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score
    torch.testing.assert_close(
        ours.similarity(ours.encode_image(pixels), ours.encode_text(ids, mask)), expected, atol=ATOL, rtol=0
    )


def test_cli_refuses_unsupported_pairs_and_missing_task(ours, tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--from", "ours", "--to", "ours", str(tmp_path), str(tmp_path / "out")])
    assert "--from ours --to ours is not supported" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'captioning' or 'retrieval', not None"):
        export_transformers_blip(ours, tmp_path / "hf")


def test_export_refuses_a_vit_transformers_cannot_hold(tmp_path):
    """Without the ViT's final norm, transformers' post_layernorm would have no source weight."""
    model = BlipModel(BlipConfig(vision=tiny_vision(final_norm=False), text=tiny_blip().text, embed_dim=32))
    with pytest.raises(ValueError, match="post_layernorm"):
        export_transformers_blip(model, tmp_path, "retrieval")
