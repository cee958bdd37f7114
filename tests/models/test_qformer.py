"""Q-Former: layout, the three attention masks, the ITG key/value reuse."""

from __future__ import annotations

import pytest
import torch
from conftest import text_batch, tiny_qformer

from lightning_blip.models.blip2 import QFormer
from lightning_blip.models.blip2.qformer import multimodal_causal_mask


def _model(**kw) -> QFormer:
    return QFormer(tiny_qformer(**kw)).eval()


def test_layout_cross_attention_every_second_layer_and_separate_query_ffn():
    model = _model(cross_attention_freq=2)
    assert [layer.cross_attn is not None for layer in model.layers] == [True, False, True, False]
    assert model.query_tokens.shape == (1, 8, 64)
    assert model.layers[0].ffn_query.intermediate.weight is not model.layers[0].ffn.intermediate.weight
    assert model.layers[0].cross_attn.attention.kv.key.in_features == 48
    stage2 = _model(text=False)
    assert not hasattr(stage2.embeddings, "word_embeddings") and stage2.layers[0].ffn is None
    with pytest.raises(ValueError, match="text"):
        stage2(*text_batch(), image_embeds=torch.randn(4, 5, 48))


def test_query_only_pass_shape_and_image_dependence():
    model = _model()
    image_a, image_b = torch.randn(3, 5, 48), torch.randn(3, 5, 48)
    out_a = model(image_embeds=image_a).last_hidden_state
    assert out_a.shape == (3, 8, 64)
    assert not torch.allclose(out_a, model(image_embeds=image_b).last_hidden_state)
    kv = model.image_kv(image_a)
    assert kv[1] is None and kv[0][0].shape == (3, 4, 5, 16)
    torch.testing.assert_close(out_a, model(image_kv=kv).last_hidden_state)


def test_queries_do_not_see_text_under_the_itg_mask_and_do_under_itm():
    model = _model()
    image = torch.randn(4, 5, 48)
    ids_a, mask = text_batch()
    ids_b = ids_a.clone()
    ids_b[:, 1:3] += 7
    alone = model(image_embeds=image).last_hidden_state
    for causal in (True, False):
        joint_a = model(ids_a, mask, image_embeds=image, causal=causal).last_hidden_state
        joint_b = model(ids_b, mask, image_embeds=image, causal=causal).last_hidden_state
        if causal:  # ITG: the queries' outputs equal the query-only pass whatever the text
            torch.testing.assert_close(joint_a[:, :8], alone)
            torch.testing.assert_close(joint_b[:, :8], alone)
        else:  # ITM: queries and text see each other
            assert not torch.allclose(joint_a[:, :8], joint_b[:, :8])


def test_text_alone_does_not_see_queries_or_image():
    model = _model()
    ids, mask = text_batch()
    text = model(ids, mask, queries=False).last_hidden_state
    assert text.shape == (4, 7, 64)
    joint_itg = model(ids, mask, image_embeds=torch.randn(4, 5, 48), causal=True).last_hidden_state
    assert not torch.allclose(joint_itg[:, 8:], text)  # under ITG the text does read the queries


def test_itg_with_cached_query_keys_values_equals_one_masked_pass():
    model = _model()
    image = torch.randn(4, 5, 48)
    ids, mask = text_batch()
    query_pass = model(image_embeds=image, use_cache=True)
    cached = model(ids, mask, queries=False, causal=True, query_cache=query_pass.cache).last_hidden_state
    joint = model(ids, mask, image_embeds=image, causal=True).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(cached[real], joint[:, 8:][real])


def test_itg_is_causal_over_the_text():
    model = _model()
    image = torch.randn(4, 5, 48)
    ids, mask = text_batch()
    cache = model(image_embeds=image, use_cache=True).cache
    changed = ids.clone()
    changed[:, 4] += 3
    a = model(ids, mask, queries=False, causal=True, query_cache=cache).last_hidden_state
    b = model(changed, mask, queries=False, causal=True, query_cache=cache).last_hidden_state
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_multimodal_causal_mask_by_hand():
    text_mask = torch.tensor([[1, 1, 0]])
    got = multimodal_causal_mask(2, text_mask)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
        ]
    )
    assert torch.equal(got, expected)


def test_first_token_only_equals_the_full_text_pass():
    model = _model()
    ids, mask = text_batch()
    full = model(ids, mask, queries=False).last_hidden_state
    first = model(ids, mask, queries=False, first_token_only=True).last_hidden_state
    torch.testing.assert_close(first[:, 0], full[:, 0])
    with pytest.raises(ValueError, match="first_token_only"):
        model(ids, mask, image_embeds=torch.randn(4, 5, 48), first_token_only=True)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = text_batch()
    image = torch.randn(4, 5, 48)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = QFormer(tiny_qformer(grad_checkpointing=ckpt))
        model(ids, mask, image_embeds=image).last_hidden_state.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_runs_and_keeps_layernorm_fp32():
    model = _model()
    ids, mask = text_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, image_embeds=torch.randn(4, 5, 48)).last_hidden_state
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
