"""transformers' BlipForQuestionAnswering <-> our BlipVQA: same question states, answer logits and answers.

transformers is given [ENC]-first question ids (BLIP's question encoder replaces [CLS] by [ENC]);
its ``generate`` lets the decoder attend to the question's padding, which ``QuestionStates(states,
None)`` reproduces.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import text_batch, tiny_text, tiny_vision
from test_blip_transformers_parity import images, randomise, until_sep

from lightning_blip.convert import command as convert
from lightning_blip.convert.export_blip import export_transformers_blip
from lightning_blip.models.blip import BlipConfig, BlipVQA, QuestionStates
from lightning_blip.models.shared.generation import generate_ids
from lightning_blip.weights.transformers_blip_vqa import load_transformers_blip_vqa

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
WIDTH = 64  # BLIP's VQA decoder reads the question with the ViT's width in transformers: equal widths

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_vqa_config() -> transformers.BlipConfig:
    vision = {"image_size": 32, "patch_size": 8, "num_hidden_layers": 2, "hidden_size": WIDTH}
    vision |= {"intermediate_size": 4 * WIDTH, "num_attention_heads": 4, "layer_norm_eps": 1e-6}
    text = {"num_hidden_layers": 2, "hidden_size": WIDTH, "intermediate_size": 128, "num_attention_heads": 4}
    text |= {"vocab_size": 30524, "encoder_hidden_size": WIDTH}
    return transformers.BlipConfig(vision_config=vision, text_config=text)


def our_vqa() -> BlipVQA:
    config = BlipConfig(vision=tiny_vision(timm_kwargs_extra={"embed_dim": WIDTH}), text=tiny_text())
    model = BlipVQA(config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def vqa_pair(tmp_path_factory):
    torch.manual_seed(4)
    hf = randomise(transformers.BlipForQuestionAnswering(hf_vqa_config()))
    path = tmp_path_factory.mktemp("vqa")
    hf.save_pretrained(path)
    ours = our_vqa()
    report = load_transformers_blip_vqa(ours, path)
    return hf, ours, report, path


def questions(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS]-first question ids, mask, and the same ids [ENC]-first (what transformers must be fed)."""
    ids, mask = text_batch(batch=batch, length=6)
    enc = ids.clone()
    enc[:, 0] = 30523
    return ids, mask, enc


def test_report_loads_every_weight(vqa_pair):
    report = vqa_pair[2]
    assert report.missing == [] and report.unexpected == [] and report.missing_expected == []
    assert "answer_decoder.layers.1.decoder_self_attn.attention.kv.value.weight" in report.loaded
    assert "question_encoder.layers.0.self_attn.dense.bias" in report.loaded
    assert {"answer_head.decoder.weight", "answer_head.decoder.bias", "answer_head.dense.weight"} <= set(
        report.loaded
    )


def test_question_states_and_answer_logits_match(vqa_pair):
    hf, ours, *_ = vqa_pair
    pixels = images()
    ids, mask, enc = questions()
    image_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state
    expected = hf.text_encoder(input_ids=enc, attention_mask=mask, encoder_hidden_states=image_embeds)[0]
    question = ours.encode_questions(ours.encode_image(pixels), ids, mask)
    torch.testing.assert_close(question.states, expected, atol=ATOL, rtol=0)

    answers, answer_mask = text_batch(batch=3, length=4)
    answers[:, 0] = 30522  # [DEC]

    def hf_logits(question_mask):
        return hf.text_decoder(
            input_ids=answers,
            attention_mask=answer_mask,
            encoder_hidden_states=expected,
            encoder_attention_mask=question_mask,
        ).logits

    # transformers 5.23 drops the cross-attention mask (BlipTextAttention passes it on as the
    # self-attention mask, which BlipTextSelfAttention ignores in cross-attention): its decoder
    # attends to the question's padding whatever the mask, so compare with ours unmasked
    hf_masked = hf_logits(mask)
    torch.testing.assert_close(hf_masked, hf_logits(torch.ones_like(mask)), atol=0, rtol=0)
    for image_mask in (None, mask):
        hidden = ours.answer_decoder(
            answers, answer_mask, "decoder", image_kv=ours.question_kv(question), image_mask=image_mask
        ).last_hidden_state
        m = answer_mask[..., None]
        close = torch.allclose(ours.answer_head(hidden) * m, hf_masked * m, atol=ATOL, rtol=0)
        assert close == (image_mask is None)  # ours masks padded questions when told (as BLIP)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("sep_boost", [0.0, 6.0])
def test_generated_answers_match(vqa_pair, num_beams, sep_boost):
    """BLIP's settings (max 10, min 1 tokens counting [DEC]); length penalty 0 for beams (see the
    module docstring of transformers_blip_vqa); ``sep_boost`` makes answers end early."""
    hf, ours, *_ = vqa_pair
    pixels = images(4)
    ids, mask, enc = questions(4)
    settings = {"num_beams": num_beams, "max_length": 10, "min_length": 3, "length_penalty": 0.0}
    biases = (hf.text_decoder.cls.predictions.bias, ours.answer_head.decoder.bias)
    saved = [bias.detach().clone() for bias in biases]
    with torch.no_grad():
        for bias in biases:
            bias[102] += sep_boost
    try:
        expected = hf.generate(input_ids=enc, pixel_values=pixels, attention_mask=mask, **settings)
        question = ours.encode_questions(ours.encode_image(pixels), ids, mask)
        unmasked = QuestionStates(question.states, None)  # as transformers' (and BLIP's) generate
        if num_beams == 1:  # the public entry point
            got = ours.generate_answers(unmasked, max_length=10, min_length=3, num_beams=1)
        else:
            start = torch.full((4, 1), ours.config.bos_token_id)
            got = generate_ids(ours, unmasked, start, **settings)
    finally:
        with torch.no_grad():
            for bias, value in zip(biases, saved, strict=True):
                bias.copy_(value)
    width = max(got.shape[1], expected.shape[1])
    assert torch.equal(until_sep(got, width), until_sep(expected, width))
    ended = (got == 102).any(1)
    assert ended.all() if sep_boost else not ended.any()


def test_export_round_trip_and_cli(vqa_pair, tmp_path):
    """transformers -> ours (CLI) -> transformers (CLI): transformers loads every key, same logits."""
    hf, _, _, path = vqa_pair
    convert.main(["--from", "transformers", "--to", "ours", str(path), str(tmp_path / "ours")])
    back = BlipVQA(BlipConfig.from_dict(json.loads((tmp_path / "ours" / "config.json").read_text())))
    report = back.load_pretrained(tmp_path / "ours" / "model.safetensors")
    assert report.mismatched == [] and report.ignored == []
    convert.main(["--from", "ours", "--to", "transformers", str(tmp_path / "ours"), str(tmp_path / "hf")])
    again, info = transformers.BlipForQuestionAnswering.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert {k: v for k, v in info.items() if v} == {}
    again.eval()
    assert again.config.vision_config.layer_norm_eps == 1e-6
    for key, value in hf.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    pixels = images()
    _, mask, enc = questions()
    expected = hf.generate(input_ids=enc, pixel_values=pixels, attention_mask=mask, max_length=6)
    assert torch.equal(
        again.generate(input_ids=enc, pixel_values=pixels, attention_mask=mask, max_length=6), expected
    )


def test_export_refuses_vit_width_other_than_text_width(tmp_path):
    model = BlipVQA(BlipConfig(vision=tiny_vision(), text=tiny_text()))  # ViT 48 wide, text 64
    with pytest.raises(ValueError, match="ViT width"):
        export_transformers_blip(model, tmp_path)


def test_from_pretrained_reads_the_transformers_directory(vqa_pair):
    _, ours, _, path = vqa_pair
    model = BlipVQA.from_pretrained(path).eval()
    state = ours.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)
