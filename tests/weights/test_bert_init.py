"""bert-base-uncased as the papers' start: BLIP's text encoder and decoder, BLIP-2's Q-Former.

A tiny random ``BertForMaskedLM`` of the tiny models' sizes stands in for bert-base-uncased; each
expected weight is read from it by BERT's own names, not through our key tables.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_blip, tiny_blip2

from lightning_blip.tasks import MEDPretrain, QFormerStage1

transformers = pytest.importorskip("transformers")


def _tiny_bert(folder, layers: int, hidden: int = 64) -> dict[str, torch.Tensor]:
    """A tiny random BERT (MLM head) with weights far from any initialisation of ours, saved to ``folder``."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
    )
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return model.state_dict()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """As many layers as the tiny MED (2) and the tiny Q-Former (4)."""
    folders = {n: tmp_path_factory.mktemp(f"bert{n}") for n in (2, 4)}
    return {n: (folder, _tiny_bert(folder, n)) for n, folder in folders.items()}


def test_blip_text_encoder_and_decoder_start_from_bert(bert):
    folder, theirs = bert[2]
    module = MEDPretrain(tiny_blip(), queue_size=8, init_weights=str(folder))
    ours = module.model.blip.state_dict()
    layer = "bert.encoder.layer.1."
    for self_attn in ("self_attn", "decoder_self_attn"):  # both from BERT's one self-attention
        assert torch.equal(
            ours[f"text.layers.1.{self_attn}.attention.query.weight"],
            theirs[layer + "attention.self.query.weight"],
        )
        assert torch.equal(
            ours[f"text.layers.1.{self_attn}.norm.bias"], theirs[layer + "attention.output.LayerNorm.bias"]
        )
    assert torch.equal(
        ours["text.layers.1.ffn.intermediate.weight"], theirs[layer + "intermediate.dense.weight"]
    )
    assert torch.equal(ours["lm_head.dense.weight"], theirs["cls.predictions.transform.dense.weight"])
    words = ours["text.embeddings.word_embeddings.weight"]
    assert words.shape[0] == 30524 and torch.equal(
        words[:30522], theirs["bert.embeddings.word_embeddings.weight"]
    )
    assert words[30522:].std() < 0.1  # [DEC] and [ENC]: new rows at our initialisation (std 0.02)
    assert ours["text.layers.1.cross_attn.attention.query.weight"].std() < 0.1  # cross-attention: new
    # the momentum encoders start as copies of the initialised model
    momentum = module.model.text_m.state_dict() if hasattr(module.model, "text_m") else None
    if momentum is not None:
        assert torch.equal(
            momentum["layers.1.ffn.intermediate.weight"], theirs[layer + "intermediate.dense.weight"]
        )


def test_qformer_starts_from_bert_with_the_query_ffn_copied(bert):
    folder, theirs = bert[4]
    module = QFormerStage1(tiny_blip2(), init_weights=str(folder))
    ours = module.model.blip2.state_dict()
    layer = "bert.encoder.layer.2."
    for ffn in ("ffn", "ffn_query"):  # LAVIS copies each layer's FFN into the queries' FFN
        assert torch.equal(
            ours[f"qformer.layers.2.{ffn}.intermediate.weight"], theirs[layer + "intermediate.dense.weight"]
        )
        assert torch.equal(
            ours[f"qformer.layers.2.{ffn}.norm.weight"], theirs[layer + "output.LayerNorm.weight"]
        )
    assert torch.equal(
        ours["qformer.layers.2.self_attn.attention.query.bias"], theirs[layer + "attention.self.query.bias"]
    )
    words = ours["qformer.embeddings.word_embeddings.weight"]
    assert (
        torch.equal(words[:30522], theirs["bert.embeddings.word_embeddings.weight"])
        and words.shape[0] == 30523
    )
    assert ours["qformer.layers.0.cross_attn.attention.query.weight"].std() < 0.1  # new, every 2nd layer
    assert torch.equal(ours["lm_head.dense.weight"], theirs["cls.predictions.transform.dense.weight"])


def test_a_bert_of_other_sizes_fails_naming_the_key(bert, tmp_path):
    _tiny_bert(tmp_path / "narrow", layers=2, hidden=32)
    with pytest.raises(ValueError, match="shape"):
        MEDPretrain(tiny_blip(), queue_size=8, init_weights=str(tmp_path / "narrow"))
    with pytest.raises(KeyError, match=r"encoder\.layer\.3"):  # a deeper BERT: its extra layers are named
        MEDPretrain(tiny_blip(), queue_size=8, init_weights=str(bert[4][0]))
