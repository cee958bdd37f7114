"""BlipModel: heads, [ENC]/[DEC] swaps, tied LM head, feature extraction, cached greedy decoding."""

from __future__ import annotations

import torch
from conftest import text_batch

from lightning_blip.models.blip import BlipModel
from lightning_blip.models.shared.generation import greedy_decode
from lightning_blip.models.shared.tokenizer import build_tokenizer


def test_features_are_normalised_and_lm_head_is_tied(blip_config):
    model = BlipModel(blip_config).eval()
    ids, mask = text_batch()
    img = model.encode_image(torch.randn(4, 3, 32, 32))
    txt = model.encode_text(ids, mask)
    assert img.shape == txt.shape == (4, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    assert model.encode_text(ids, mask, normalize=False).norm(dim=-1).sub(1).abs().max() > 1e-3
    assert model.lm_head.decoder.weight is model.text.embeddings.word_embeddings.weight


def test_itm_uses_enc_and_lm_uses_dec_as_first_token(blip_config):
    model = BlipModel(blip_config).eval()
    ids, mask = text_batch()
    image = model.forward_image(torch.randn(4, 3, 32, 32))
    other_first = ids.clone()
    other_first[:, 0] = 999
    torch.testing.assert_close(model.itm_logits(ids, mask, image), model.itm_logits(other_first, mask, image))
    enc_ids = ids.clone()
    enc_ids[:, 0] = blip_config.enc_token_id
    hidden = model.text(enc_ids, mask, "multimodal", image_embeds=image).last_hidden_state
    torch.testing.assert_close(model.itm_logits(ids, mask, image), model.itm_head(hidden[:, 0]))
    dec_ids = ids.clone()
    dec_ids[:, 0] = blip_config.bos_token_id
    hidden = model.text(dec_ids, mask, "decoder", image_embeds=image).last_hidden_state
    torch.testing.assert_close(model.lm_logits(ids, mask, image), model.lm_head(hidden))


def _greedy_without_cache(model, image, prompt, max_length, min_length):
    ids = prompt.clone()
    while ids.shape[1] < max_length:
        logits = model.lm_logits(ids, torch.ones_like(ids), image)[:, -1]
        if ids.shape[1] < min_length:
            logits[:, model.config.sep_token_id] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids


def test_cached_greedy_equals_recomputing_everything(blip_config):
    model = BlipModel(blip_config).eval()
    image = model.forward_image(torch.randn(3, 3, 32, 32))
    prompt = torch.tensor([[30522, 1037, 3861, 1997]] * 3)
    fast = greedy_decode(model, image, prompt, max_length=9, min_length=9)
    slow = _greedy_without_cache(model, image, prompt, 9, 9)
    assert torch.equal(fast, slow)


def test_generate_returns_strings_without_the_prompt(blip_config):
    model = BlipModel(blip_config).eval()
    captions = model.generate(torch.randn(2, 3, 32, 32), build_tokenizer(), max_length=8)
    assert len(captions) == 2 and all(
        isinstance(c, str) and not c.startswith("a picture of") for c in captions
    )


def test_tokenizer_adds_dec_and_enc():
    tok = build_tokenizer()
    assert len(tok) == 30524 and tok.bos_token_id == 30522 and tok.enc_token_id == 30523
    assert tok("a red circle").input_ids == [101, 1037, 2417, 4418, 102]
