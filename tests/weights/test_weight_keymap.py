"""The rule-table loader: renaming, report by name, shape and tie checks; transformers BLIP edge cases."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_blip
from torch import nn

from lightning_blip.models.blip import BlipModel
from lightning_blip.weights import load_transformers_blip, load_with_rules
from lightning_blip.weights.keymap import rename

RULES = (
    (r"enc\.(\d+)\.w", r"layers.\1.weight"),
    (r"enc\.(\d+)\.b", r"layers.\1.bias"),
    (r"emb", "embed.weight"),
    (r"tied_emb", "head.weight"),
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.extra = nn.Linear(3, 1)


def toy_state() -> dict[str, torch.Tensor]:
    state = {f"enc.{i}.w": torch.randn(3, 3) for i in range(2)}
    state |= {f"enc.{i}.b": torch.randn(3) for i in range(2)}
    state["emb"] = torch.randn(5, 3)
    return state


def test_rename_first_full_match_wins():
    assert rename("enc.12.w", RULES) == "layers.12.weight"
    assert rename("enc.1.wx", RULES) is None  # whole key only
    assert rename("tied_emb", RULES) == "head.weight"


def test_report_splits_loaded_expected_missing_unexpected():
    model, state = Toy(), toy_state()
    state["stray"] = torch.zeros(1)
    report = load_with_rules(model, state, RULES, expected_absent=[r"extra\.weight"], strict=False)
    assert set(report.loaded) == {
        "embed.weight",
        "head.weight",  # tied to embed.weight: loaded with it
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    }
    assert report.missing_expected == ["extra.weight"]
    assert report.missing == ["extra.bias"]
    assert report.unexpected == ["stray"]
    torch.testing.assert_close(model.layers[1].bias.detach(), state["enc.1.b"])
    torch.testing.assert_close(model.head.weight.detach(), state["emb"])
    with pytest.raises(KeyError, match="extra.bias.*stray"):
        load_with_rules(Toy(), state, RULES, expected_absent=[r"extra\.weight"], strict=True)


def test_shape_mismatch_names_key_and_both_shapes():
    state = toy_state()
    state["enc.1.w"] = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"'enc\.1\.w'.*'layers\.1\.weight'.*\(4, 3\).*\(3, 3\)"):
        load_with_rules(Toy(), state, RULES, strict=False)


def test_tied_duplicates_must_be_equal():
    state = toy_state()
    state["tied_emb"] = state["emb"].clone()
    report = load_with_rules(Toy(), state, RULES, expected_absent=[r"extra\..*"])
    assert report.tied == ["tied_emb"] and report.missing == []
    state["tied_emb"] = state["emb"] + 1
    with pytest.raises(ValueError, match="tied_emb.*emb.*differ"):
        load_with_rules(Toy(), state, RULES, strict=False)


def test_vision_only_checkpoint_with_pos_embed_resampled():
    """transformers' BlipVisionModel keys (no ``vision_model.``); a 3x3 grid resampled to our 4x4."""
    model = BlipModel(tiny_blip())
    vit = model.visual_encoder.vit
    width = vit.embed_dim
    state = {
        "embeddings.class_embedding": torch.randn(1, 1, width),
        "embeddings.position_embedding": torch.randn(1, 1 + 9, width),  # a 3x3 grid (24 px)
        "embeddings.patch_embedding.weight": torch.randn(width, 3, 8, 8),
        "embeddings.patch_embedding.bias": torch.randn(width),
        "post_layernorm.weight": torch.randn(width),
        "post_layernorm.bias": torch.randn(width),
    }
    report = load_transformers_blip(model, state, strict=False)
    assert vit.pos_embed.shape == (1, 1 + 16, width)
    torch.testing.assert_close(vit.cls_token.detach(), state["embeddings.class_embedding"])
    assert report.unexpected == []
    assert "visual_encoder.vit.blocks.0.attn.qkv.weight" in report.missing  # a ViT key: a real miss
    assert (
        "itm_head.weight" in report.missing_expected
        and "text.embeddings.norm.weight" in report.missing_expected
    )


def test_encoder_and_decoder_together_refused():
    state = {"text_encoder.embeddings.LayerNorm.weight": torch.ones(64)}
    state["text_decoder.bert.embeddings.LayerNorm.weight"] = torch.ones(64)
    with pytest.raises(ValueError, match="BlipForQuestionAnswering"):
        load_transformers_blip(BlipModel(tiny_blip()), state, strict=False)
