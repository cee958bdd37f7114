"""MED text transformer: the three modes, masks, sharing, cache and precision."""

from __future__ import annotations

import pytest
import torch
from conftest import text_batch, tiny_text

from lightning_blip.layers.attention import LayerCache
from lightning_blip.models.blip import MEDTextModel


def _model(**kw) -> MEDTextModel:
    return MEDTextModel(tiny_text(encoder_width=48, dropout=0.0, attention_dropout=0.0, **kw)).eval()


def test_text_mode_ignores_the_image_and_multimodal_uses_it():
    model = _model()
    ids, mask = text_batch()
    image_a, image_b = torch.randn(4, 5, 48), torch.randn(4, 5, 48)
    text = model(ids, mask, "text").last_hidden_state
    assert torch.equal(text, model(ids, mask, "text", image_embeds=image_a).last_hidden_state)
    mm_a = model(ids, mask, "multimodal", image_embeds=image_a).last_hidden_state
    mm_b = model(ids, mask, "multimodal", image_embeds=image_b).last_hidden_state
    assert not torch.allclose(mm_a, mm_b) and not torch.allclose(mm_a, text)


def test_precomputed_image_kv_equals_image_embeds():
    model = _model()
    ids, mask = text_batch()
    image = torch.randn(4, 5, 48)
    direct = model(ids, mask, "decoder", image_embeds=image).last_hidden_state
    cached = model(ids, mask, "decoder", image_kv=model.image_kv(image)).last_hidden_state
    torch.testing.assert_close(direct, cached)


def test_decoder_is_causal_and_encoder_is_not():
    model = _model()
    ids, mask = text_batch(length=8)
    mask[:] = 1
    image = torch.randn(4, 5, 48)
    changed = ids.clone()
    changed[:, 5] = 1234
    dec = model(ids, mask, "decoder", image_embeds=image).last_hidden_state
    dec2 = model(changed, mask, "decoder", image_embeds=image).last_hidden_state
    torch.testing.assert_close(dec[:, :5], dec2[:, :5])
    assert not torch.allclose(dec[:, 5:], dec2[:, 5:])
    enc = model(ids, mask, "multimodal", image_embeds=image).last_hidden_state
    enc2 = model(changed, mask, "multimodal", image_embeds=image).last_hidden_state
    assert not torch.allclose(enc[:, :5], enc2[:, :5])


def test_padding_does_not_change_real_tokens():
    model = _model()
    ids, mask = text_batch(batch=1, length=6)
    mask[:] = 1
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], 1)
    for mode in ("text", "multimodal", "decoder"):
        image = torch.randn(1, 5, 48)
        a = model(ids, mask, mode, image_embeds=image).last_hidden_state
        b = model(padded, padded_mask, mode, image_embeds=image).last_hidden_state[:, :6]
        torch.testing.assert_close(a, b)


def test_decoder_shares_all_but_self_attention():
    model = _model()
    layer = model.layers[0]
    assert layer.decoder_self_attn is not layer.self_attn
    ids, mask = text_batch()
    image = torch.randn(4, 5, 48)
    model(ids, mask, "decoder", image_embeds=image).last_hidden_state.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".decoder_self_attn." in n for n in grads)
    assert not any(".self_attn." in n and "decoder" not in n for n in grads)
    assert any(".cross_attn." in n for n in grads) and any(".ffn." in n for n in grads)
    assert "embeddings.word_embeddings.weight" in grads


def test_cached_decoding_equals_full_pass():
    model = _model()
    ids, mask = text_batch(batch=2, length=7)
    mask[:] = 1
    image = torch.randn(2, 5, 48)
    full = model(ids, mask, "decoder", image_embeds=image).last_hidden_state
    cache = [LayerCache(None, kv) for kv in model.image_kv(image)]
    out = model(ids[:, :3], mask[:, :3], "decoder", cache=cache, use_cache=True)
    steps = [out.last_hidden_state]
    for t in range(3, 7):
        out = model(ids[:, t : t + 1], mask[:, : t + 1], "decoder", cache=out.cache, use_cache=True)
        steps.append(out.last_hidden_state)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # the image's keys/values are the very tensors computed once
    assert out.cache[0].image_kv[0] is cache[0].image_kv[0]


def test_no_mask_equals_an_all_ones_mask():
    """attention_mask=None (no padding) gives the all-ones mask's states in every mode, cached or not."""
    model = _model()
    ids, ones = text_batch(batch=2, length=7)
    ones[:] = 1
    image = torch.randn(2, 5, 48)
    for mode in ("text", "multimodal", "decoder"):
        expected = model(ids, ones, mode, image_embeds=image).last_hidden_state
        assert torch.equal(model(ids, None, mode, image_embeds=image).last_hidden_state, expected), mode
    runs = []
    for mask in (ones, None):  # a prompt of 3 (causal within it), then one token at a time
        cache = [LayerCache(None, kv) for kv in model.image_kv(image)]
        out = model(ids[:, :3], None if mask is None else mask[:, :3], "decoder", cache=cache, use_cache=True)
        states = [out.last_hidden_state]
        for t in range(3, 7):
            step_mask = None if mask is None else mask[:, : t + 1]
            out = model(ids[:, t : t + 1], step_mask, "decoder", cache=out.cache, use_cache=True)
            states.append(out.last_hidden_state)
        runs.append(torch.cat(states, 1))
    assert torch.equal(runs[0], runs[1])


def test_bf16_autocast_keeps_layernorm_in_fp32():
    model = _model()
    ids, mask = text_batch()
    seen = []
    model.layers[0].ffn.norm.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, "multimodal", image_embeds=torch.randn(4, 5, 48)).last_hidden_state
    assert seen == [torch.float32] and torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = text_batch()
    image = torch.randn(4, 5, 48)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MEDTextModel(
            tiny_text(encoder_width=48, dropout=0.0, attention_dropout=0.0, grad_checkpointing=ckpt)
        )
        model(ids, mask, "multimodal", image_embeds=image).last_hidden_state.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_first_token_only_equals_the_full_pass_at_position_zero():
    model = _model()
    ids, mask = text_batch()
    image = torch.randn(4, 5, 48)
    for mode in ("text", "multimodal"):
        full = model(ids, mask, mode, image_embeds=image).last_hidden_state
        first = model(ids, mask, mode, image_embeds=image, first_token_only=True).last_hidden_state
        assert first.shape == (ids.shape[0], 1, full.shape[-1])
        torch.testing.assert_close(first[:, 0], full[:, 0])
    with pytest.raises(ValueError, match="first_token_only"):
        model(ids, mask, "decoder", image_embeds=image, first_token_only=True)
