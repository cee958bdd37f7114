"""Our OPT decoding (OPTDecoding + generate_llm_ids) gives what the LLM's own ``generate`` gives."""

from __future__ import annotations

import collections

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

from lightning_blip.models.blip2.opt_decoding import OPTDecoding, runs_opt
from lightning_blip.models.shared.generation import generate_llm_ids

PAD, EOS = 1, 2
VARIANTS = {
    "pre-LN": {},
    "post-LN (OPT-350m)": {"do_layer_norm_before": False},
    "projected embeddings": {"word_embed_proj_dim": 16},
}
# (beams, length penalty, min new tokens, returned sequences)
BEAM_SETTINGS = [(2, 1.0, 1, 1), (3, 0.0, 2, 2), (3, -1.0, 1, 3), (4, 2.0, 3, 1)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _opt(**overrides) -> OPTForCausalLM:
    torch.manual_seed(0)
    settings = {"word_embed_proj_dim": 32, **overrides}
    config = OPTConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS, **settings,
    )  # fmt: skip
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():  # sharp random weights: varied, input-dependent continuations
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.4)
            elif "norm" not in name:
                p.normal_(0.0, 0.1)
    return model


def _prefix(model: OPTForCausalLM, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(3, 6, D_embed)`` embeddings (as BLIP-2's queries and prompt) and their mask."""
    dim = model.config.word_embed_proj_dim
    embeds = torch.randn(3, 6, dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 6, dtype=torch.long)
    if padded:
        mask[1, :2] = 0
        mask[2, :1] = 0
    return embeds, mask


def _stop_ids(model, embeds, mask) -> list[int]:
    """EOS and the token a free greedy run emits most: sequences then stop at different lengths."""
    free = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, do_sample=False,
                          eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    common = collections.Counter(t for t in free.flatten().tolist() if t not in (EOS, PAD)).most_common(1)
    return [EOS, common[0][0]]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    width = max(a.shape[1], b.shape[1])
    pad = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD) for t in (a, b)]
    return torch.equal(*pad)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_greedy_and_beam_search_equal_the_llms_generate(variant, padded):
    model = _opt(**VARIANTS[variant])
    embeds, mask = _prefix(model, padded)
    eos = _stop_ids(model, embeds, mask)
    settings = [(1, 1.0, m, 1) for m in (1, 3)] + BEAM_SETTINGS
    lengths = set()
    for beams, length_penalty, min_new, returned in settings:
        options = {"num_beams": beams, "max_new_tokens": 8, "min_new_tokens": min_new}
        options |= {"length_penalty": length_penalty, "num_return_sequences": returned} if beams > 1 else {}
        ours = generate_llm_ids(OPTDecoding(model, embeds, mask, 8), 3, eos, pad_token_id=PAD, **options)
        expected = model.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=eos,
                                  pad_token_id=PAD, do_sample=False, **options)  # fmt: skip
        assert _same(ours, expected), (variant, padded, beams, length_penalty, min_new, returned)
        assert ours.shape[0] == 3 * returned
        lengths |= {int((row != PAD).sum()) for row in ours}
    assert min(lengths) < 8 and 8 in lengths  # some stopped early, some ran to max_new_tokens


def test_only_a_plain_opt_is_run_ourselves():
    model = _opt()
    assert runs_opt(model)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=4, n_positions=32))
    assert not runs_opt(gpt2)
    handle = model.model.decoder.layers[0].register_forward_pre_hook(lambda module, args: None)
    assert not runs_opt(model)  # e.g. FSDP's unsharding hooks: calling the layer is needed
    with pytest.raises(TypeError, match="OPTForCausalLM"):
        OPTDecoding(model, *_prefix(model, False), 4)
    handle.remove()
    assert runs_opt(model)
