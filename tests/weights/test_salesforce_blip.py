"""salesforce/BLIP and LAVIS ``.pth`` layouts load into ours and compute what transformers computes.

The test writes the salesforce layout itself from tiny random transformers models, with its own
small key table (transformers' BLIP text keys are BLIP's ``med.py`` names; only the ViT differs),
adds what BLIP's files also hold (tied LM-head copies, momentum encoders, queues, a 0-d ``temp``),
and compares our loaded model with the transformers model the weights came from.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import text_batch, tiny_blip, tiny_text, tiny_vision
from test_blip_transformers_parity import assert_same_lm_logits, hf_config, images, randomise, until_sep
from test_blip_vqa_transformers import hf_vqa_config, our_vqa, questions

from lightning_blip.convert import command as convert
from lightning_blip.models.blip import BlipConfig, BlipModel, BlipVQA, QuestionStates
from lightning_blip.models.blip.pretrained import blip_config
from lightning_blip.models.shared.generation import generate_ids
from lightning_blip.weights.salesforce_blip import load_salesforce_blip

transformers = pytest.importorskip("transformers")

ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_NAMES = (  # transformers' BlipVisionModel -> BLIP's (timm's) ViT
    (r"vision_model\.embeddings\.class_embedding", "visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "visual_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.",
        r"visual_encoder.blocks.\1.attn.proj.",
    ),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.", r"visual_encoder.blocks.\1.attn."),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm", r"visual_encoder.blocks.\1.norm"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"vision_model\.post_layernorm\.", "visual_encoder.norm."),
)


def salesforce_layout(hf_state: dict[str, torch.Tensor], temp: bool = True) -> dict[str, torch.Tensor]:
    """BLIP's keys for a transformers BLIP state dict, with BLIP's tied LM-head copies and ``temp``."""
    state = {}
    for key, value in hf_state.items():
        for pattern, replacement in VIT_NAMES:
            key = re.sub("^" + pattern, replacement, key)
        state[key] = value.clone()
    if "text_decoder.cls.predictions.bias" in state:  # BLIP's state dict holds the tied copies too
        state["text_decoder.cls.predictions.decoder.bias"] = state[
            "text_decoder.cls.predictions.bias"
        ].clone()
        word = state["text_decoder.bert.embeddings.word_embeddings.weight"]
        state["text_decoder.cls.predictions.decoder.weight"] = word.clone()
        state["text_decoder.bert.embeddings.position_ids"] = torch.arange(512)[None]
    if temp:
        state["temp"] = torch.tensor(0.07)  # 0-d in BLIP
    return state


def training_extras(state: dict[str, torch.Tensor], pointer: str, momentum: bool) -> dict[str, torch.Tensor]:
    """Momentum copies (salesforce/BLIP keeps them, LAVIS drops them) and the ITC queues."""
    extras = {"image_queue": torch.randn(32, 8), "text_queue": torch.randn(32, 8), pointer: torch.zeros(1)}
    if momentum:
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in ("visual_encoder", "text_encoder", "vision_proj", "text_proj"):
                extras[f"{head}_m.{rest}"] = value + 1  # momentum weights differ from the online ones
    return {**state, **extras}


@pytest.fixture(scope="module")
def hf_models():
    """A retrieval and a captioning transformers model that share the ViT and the shared text layers,
    as the encoder and decoder of one pretrained BLIP do."""
    torch.manual_seed(7)
    retrieval = randomise(transformers.BlipForImageTextRetrieval(hf_config()))
    caption = randomise(transformers.BlipForConditionalGeneration(hf_config()))
    shared = {}
    for key, value in retrieval.state_dict().items():
        if key.startswith("vision_model."):
            shared[key] = value
        elif key.startswith("text_encoder.") and ".attention." not in key:
            shared["text_decoder.bert." + key.removeprefix("text_encoder.")] = value
    caption.load_state_dict(shared, strict=False)
    return retrieval, caption


@pytest.fixture(scope="module")
def pretrain_file(hf_models, tmp_path_factory):
    retrieval, caption = hf_models
    state = salesforce_layout({**retrieval.state_dict(), **caption.state_dict()})  # encoder first, as BLIP
    state = training_extras(state, "queue_ptr", momentum=True)
    path = tmp_path_factory.mktemp("salesforce") / "model_base.pth"
    torch.save({"model": state, "epoch": 19}, path)
    return path, state


def our_config_file(path, config: BlipConfig):
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(config)))
    return path


def check_retrieval(ours: BlipModel, retrieval) -> None:
    pixels = images()
    ids, mask = text_batch(batch=3)
    expected = retrieval(
        input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False
    ).itm_score
    sim = ours.similarity(ours.encode_image(pixels), ours.encode_text(ids, mask))
    torch.testing.assert_close(sim, expected, atol=ATOL, rtol=0)
    enc = ids.clone()
    enc[:, 0] = ours.config.enc_token_id
    expected = retrieval(input_ids=enc, pixel_values=pixels, attention_mask=mask).itm_score
    torch.testing.assert_close(
        ours.itm_logits(ids, mask, ours.forward_image(pixels)), expected, atol=ATOL, rtol=0
    )


def check_captioning(ours: BlipModel, caption) -> None:
    assert_same_lm_logits(ours, caption)
    pixels = images()
    prompt = torch.tensor([[101, 1037, 3861, 1997, 102]] * 3)
    for beams in (1, 3):
        settings = {"num_beams": beams, "max_length": 10, "min_length": 6, "length_penalty": 0.0}
        hf_ids = caption.generate(pixel_values=pixels, input_ids=prompt.clone(), **settings)
        got = generate_ids(ours, ours.forward_image(pixels), prompt[:, :-1], **settings)
        width = max(got.shape[1], hf_ids.shape[1])
        assert torch.equal(until_sep(got, width), until_sep(hf_ids, width))


def test_pretraining_checkpoint_is_one_med(pretrain_file, hf_models):
    """Encoder + decoder + heads into one BlipModel: the decoder's shared layers are tied copies of the
    encoder's, momentum encoders and queues are ignored, and every task matches transformers."""
    ours = BlipModel(tiny_blip()).eval()
    report = load_salesforce_blip(ours, pretrain_file[0])
    assert report.missing == [] and report.unexpected == [] and report.missing_expected == []
    assert "text_decoder.bert.encoder.layer.1.crossattention.self.key.weight" in report.tied
    assert "text_decoder.bert.embeddings.word_embeddings.weight" in report.tied
    assert not any(".attention." in k for k in report.tied)  # self-attention is not shared
    assert {"queue_ptr", "image_queue", "visual_encoder_m.pos_embed", "text_proj_m.weight"} <= set(
        report.ignored
    )
    assert ours.temp.shape == (1,) and ours.temp.item() == pytest.approx(0.07)
    check_retrieval(ours, hf_models[0])
    check_captioning(ours, hf_models[1])


def test_untied_copies_are_refused(pretrain_file):
    state = dict(pretrain_file[1])
    key = "text_decoder.bert.encoder.layer.0.intermediate.dense.weight"
    state[key] = state[key] + 1
    with pytest.raises(ValueError, match="intermediate.dense.weight.*differ"):
        load_salesforce_blip(BlipModel(tiny_blip()), state)


def test_retrieval_and_captioning_checkpoints(hf_models):
    """``BLIP_Retrieval`` (``ptr_queue``, ``idx_queue``) and ``BLIP_Decoder`` (no ``temp``)."""
    retrieval, caption = hf_models
    state = training_extras(salesforce_layout(retrieval.state_dict()), "ptr_queue", momentum=True)
    state["idx_queue"] = torch.full((1, 8), -100)
    ours = BlipModel(tiny_blip()).eval()
    report = load_salesforce_blip(ours, state)
    assert report.missing == [] and report.unexpected == []
    assert "text.layers.0.decoder_self_attn.dense.weight" in report.missing_expected
    check_retrieval(ours, retrieval)

    ours = BlipModel(tiny_blip()).eval()
    report = load_salesforce_blip(ours, salesforce_layout(caption.state_dict(), temp=False))
    assert report.missing == [] and report.unexpected == [] and "temp" in report.missing_expected
    check_captioning(ours, caption)


def test_position_embeddings_resampled_to_a_larger_image():
    """A 32-px (4x4 grid) checkpoint into a 48-px (6x6) model, as BLIP's 224 -> 384 fine-tunes."""
    torch.manual_seed(8)
    hf = randomise(transformers.BlipForImageTextRetrieval(hf_config()))
    state = salesforce_layout(hf.state_dict())
    ours = BlipModel(BlipConfig(vision=tiny_vision(image_size=48), text=tiny_text(), embed_dim=32))
    report = load_salesforce_blip(ours, state)
    assert report.missing == [] and report.unexpected == []
    # salesforce/BLIP's interpolate_pos_embed, written out: bicubic, align_corners=False, no antialiasing
    source = state["visual_encoder.pos_embed"]
    grid = source[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([source[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    torch.testing.assert_close(ours.visual_encoder.vit.pos_embed.detach(), expected)


@pytest.fixture(scope="module")
def vqa_state():
    torch.manual_seed(9)
    hf = randomise(transformers.BlipForQuestionAnswering(hf_vqa_config()))
    return hf, salesforce_layout(hf.state_dict(), temp=False)


def test_vqa_checkpoint_gives_transformers_answers(vqa_state):
    hf, state = vqa_state
    state = {**state, "text_encoder.embeddings.position_ids": torch.arange(512)[None]}
    ours = our_vqa()
    report = load_salesforce_blip(ours, state)
    assert (
        report.missing == []
        and report.unexpected == []
        and sorted(report.tied)
        == [
            "text_decoder.cls.predictions.decoder.bias",
            "text_decoder.cls.predictions.decoder.weight",
        ]
    )
    pixels = images()
    ids, mask, enc = questions()
    expected = hf.generate(
        input_ids=enc, pixel_values=pixels, attention_mask=mask, max_length=10, min_length=1
    )
    question = ours.encode_questions(ours.encode_image(pixels), ids, mask)
    got = ours.generate_answers(QuestionStates(question.states, None), num_beams=1)
    width = max(got.shape[1], expected.shape[1])
    assert torch.equal(until_sep(got, width), until_sep(expected, width))
    with pytest.raises(ValueError, match="vqa checkpoint loads into a BlipVQA"):
        load_salesforce_blip(BlipModel(tiny_blip()), state)


def test_cli_salesforce_and_lavis(pretrain_file, hf_models, vqa_state, tmp_path):
    """``convert --from salesforce|lavis --to ours|transformers --config CONFIG.json``."""
    path, state = pretrain_file
    config = our_config_file(tmp_path / "tiny.json", tiny_blip())
    convert.main(
        ["--from", "salesforce", "--to", "ours", "--config", str(config), str(path), str(tmp_path / "a")]
    )
    ours = BlipModel(BlipConfig.from_dict(json.loads((tmp_path / "a" / "config.json").read_text()))).eval()
    assert ours.load_pretrained(tmp_path / "a" / "model.safetensors").ignored == []
    check_retrieval(ours, hf_models[0])

    # LAVIS: the momentum copies dropped from its checkpoints, ``queue_ptr``
    lavis = {k: v for k, v in state.items() if "_m." not in k}
    torch.save({"model": lavis}, tmp_path / "lavis.pth")
    out = tmp_path / "hf"
    args = ["--from", "lavis", "--to", "transformers", "--task", "captioning", "--config", str(config)]
    convert.main([*args, str(tmp_path / "lavis.pth"), str(out)])
    caption, info = transformers.BlipForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    for key, value in hf_models[1].state_dict().items():
        torch.testing.assert_close(caption.state_dict()[key], value, atol=0, rtol=0, msg=key)

    # VQA -> BlipVQA
    torch.save(vqa_state[1], tmp_path / "vqa.pth")
    vqa_config = our_config_file(tmp_path / "vqa.json", our_vqa().config)
    convert.main(
        [
            "--from",
            "salesforce",
            "--to",
            "ours",
            "--config",
            str(vqa_config),
            str(tmp_path / "vqa.pth"),
            str(tmp_path / "v"),
        ]
    )
    summary = json.loads((tmp_path / "v" / "conversion.json").read_text())
    assert summary["model"] == "BlipVQA" and summary["missing"] == []
    vqa = BlipVQA(BlipConfig.from_dict(json.loads((tmp_path / "v" / "config.json").read_text())))
    assert vqa.load_pretrained(tmp_path / "v" / "model.safetensors").mismatched == []


def test_cli_needs_a_config_for_salesforce(pretrain_file, tmp_path):
    with pytest.raises(SystemExit, match="needs --config"):
        convert.main(["--from", "salesforce", "--to", "ours", str(pretrain_file[0]), str(tmp_path / "x")])


def test_presets_take_the_checkpoint_image_size():
    """``--config base``: ViT-B/16; the image size from the checkpoint's position grid (24x24: 384 px)."""
    state = {"visual_encoder.pos_embed": torch.zeros(1, 1 + 24 * 24, 1)}
    config = blip_config("base", state)
    assert (config.vision.model_name, config.vision.image_size) == ("vit_base_patch16_224", 384)
    assert blip_config("large", state, image_size=224).vision.image_size == 224
    with pytest.raises(ValueError, match="base"):
        blip_config("huge", state)


def test_from_pretrained_reads_a_salesforce_file_with_the_config_given(pretrain_file, hf_models):
    ours = BlipModel.from_pretrained(pretrain_file[0], config=tiny_blip()).eval()
    check_retrieval(ours, hf_models[0])
    check_captioning(ours, hf_models[1])
