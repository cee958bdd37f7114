"""Vision encoder: tokens, position-embedding interpolation, checkpointing, local weights."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import tiny_vision
from safetensors.torch import save_file

from lightning_blip.models.shared.vision import VisionEncoder


@torch.no_grad()
def test_returns_all_tokens_with_cls_first():
    enc = VisionEncoder(tiny_vision(image_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = enc(x)
    assert out.shape == (2, 1 + 16, 48)
    torch.testing.assert_close(out, enc.vit.forward_features(x))  # timm's own pass, in its order
    # without blocks and final norm, token 0 is the [CLS] parameter and 1.. the patches, plus positions
    enc.vit.blocks, enc.vit.norm = torch.nn.Sequential(), torch.nn.Identity()
    out, vit = enc(x), enc.vit
    torch.testing.assert_close(out[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[:, 0].expand(2, -1))
    patches = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, 16, D), row-major patches
    torch.testing.assert_close(out[:, 1:], patches + vit.pos_embed[:, 1:])


def test_position_embeddings_are_interpolated_when_the_size_differs(tmp_path):
    small = VisionEncoder(tiny_vision(image_size=32))
    save_file(small.vit.state_dict(), tmp_path / "vit.safetensors")
    big = VisionEncoder(tiny_vision(image_size=64, weights=str(tmp_path / "vit.safetensors")))
    assert big.vit.pos_embed.shape == (1, 1 + 64, 48)
    torch.testing.assert_close(big.vit.pos_embed[:, 0], small.vit.pos_embed[:, 0])  # [CLS] kept
    # BLIP's interpolate_pos_embed: bicubic, align_corners=False, no antialiasing (timm's default has it)
    grid = small.vit.pos_embed[:, 1:].detach().reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(big.vit.pos_embed[:, 1:].detach(), grid.permute(0, 2, 3, 1).reshape(1, 64, 48))
    torch.testing.assert_close(big.vit.blocks[0].attn.qkv.weight, small.vit.blocks[0].attn.qkv.weight)
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 65, 48)


def test_torch_file_loads_with_weights_only_and_pickled_code_is_refused(tmp_path):
    enc = VisionEncoder(tiny_vision())
    torch.save({"model": enc.vit.state_dict()}, tmp_path / "vit.pth")
    VisionEncoder(tiny_vision(weights=str(tmp_path / "vit.pth")))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": pytest.approx}, f)  # a function object needs arbitrary unpickling
    with pytest.raises(ValueError, match="arbitrary unpickling"):
        VisionEncoder(tiny_vision(weights=str(tmp_path / "evil.pth")))


def test_missing_keys_are_named(tmp_path):
    enc = VisionEncoder(tiny_vision())
    state = enc.vit.state_dict()
    state.pop("cls_token")
    save_file(state, tmp_path / "vit.safetensors")
    with pytest.raises(KeyError, match="cls_token"):
        VisionEncoder(tiny_vision(weights=str(tmp_path / "vit.safetensors")))


def test_gradient_checkpointing_of_last_blocks_keeps_outputs_and_gradients():
    x = torch.randn(2, 3, 32, 32)
    results = []
    for k in (0, 1):
        torch.manual_seed(0)
        enc = VisionEncoder(tiny_vision(grad_checkpointing_layers=k)).train()
        out = enc(x)
        out.pow(2).sum().backward()
        results.append((out.detach(), enc.vit.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_drop_path_and_removed_blocks():
    enc = VisionEncoder(tiny_vision(drop_path=0.1, num_removed_blocks=1, final_norm=False))
    assert len(enc.vit.blocks) == 1 and isinstance(enc.vit.norm, torch.nn.Identity)
    enc = VisionEncoder(tiny_vision(drop_path=0.1))  # linear rule: the last block gets the full rate
    assert enc.vit.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
