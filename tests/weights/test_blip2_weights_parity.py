"""BLIP-2 weights in and out: transformers' and LAVIS's layouts load into ours and compute the same
numbers, and our export loads back into transformers' own classes.

Tiny random transformers ``Blip2ForConditionalGeneration`` (OPT, T5) and ``Blip2ForImageTextRetrieval``
models are saved with ``save_pretrained`` and converted; every comparison is fp32, eval mode.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from conftest import text_batch

from lightning_blip.convert.export_blip2 import export_blip2_to_transformers, export_transformers_blip2
from lightning_blip.convert.ours_blip2 import convert_transformers_blip2, load_converted_blip2
from lightning_blip.models.blip2 import Blip2Config, Blip2ForGeneration, Blip2Model
from lightning_blip.models.blip2 import llm as blip2_llm
from lightning_blip.models.blip2.pretrained import blip2_config_from_transformers
from lightning_blip.models.blip2.small_llm import (
    DEFAULT_TEXTS,
    tiny_llm_config,
    tokenizer_for,
    train_word_tokenizer,
)
from lightning_blip.models.shared.vision import VisionConfig
from lightning_blip.weights.lavis_blip2 import load_lavis_blip2
from lightning_blip.weights.transformers_blip2 import load_transformers_blip2, match_qkv_bias

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
Q = 4  # queries
KINDS = ("opt", "t5", "retrieval")
LLMS = ("opt", "t5")
TIMM_VIT = {
    "embed_dim": 48,
    "depth": 2,
    "num_heads": 4,
    "patch_size": 8,
    "mlp_ratio": 2.0,
}  # hf_config's sizes
SEEDS = {"opt": 0, "t5": 5, "retrieval": 2}  # seeds whose random LLMs generate varied text

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def hf_config(kind: str, tokenizer=None) -> transformers.Blip2Config:
    """Vision eps 1e-6: timm's block eps; the converted ln_vision takes transformers' eps."""
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "num_hidden_layers": 2,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "layer_norm_eps": 1e-6,
    }
    qformer = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "vocab_size": 30523,
        "max_position_embeddings": 64,
        "use_qformer_text_input": kind == "retrieval",
    }
    if kind == "retrieval":
        return transformers.Blip2Config(
            vision_config=vision, qformer_config=qformer, num_query_tokens=Q, image_text_hidden_size=16
        )
    text = tiny_llm_config(kind, tokenizer, hidden_size=24)
    text.vocab_size = len(tokenizer) + 3  # spare embedding rows, as the released LLMs have
    return transformers.Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=Q,
        image_token_index=len(tokenizer),
    )


@torch.no_grad()
def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """transformers initialises the ViT at ~1e-10 and the queries at 0: give every weight a visible value."""
    for name, p in model.named_parameters():
        noise = torch.randn_like(p) * 0.1
        if "norm" in name.lower() and name.endswith("weight"):
            noise += 1
        elif name.startswith("language_model.") and p.dim() == 2:
            noise *= 5  # sharper random LLMs give varied, image-dependent generations
        p.copy_(noise)
    return model.eval()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """kind -> (transformers model, its directory, our converted model, conversion.json)."""
    out = {}
    for kind in KINDS:
        torch.manual_seed(SEEDS[kind])
        tokenizer = None if kind == "retrieval" else tokenizer_for(kind, train_word_tokenizer(DEFAULT_TEXTS))
        config = hf_config(kind, tokenizer)
        cls = (
            transformers.Blip2ForImageTextRetrieval
            if kind == "retrieval"
            else transformers.Blip2ForConditionalGeneration
        )
        hf = randomise(cls(config))
        source = tmp_path_factory.mktemp(f"hf_{kind}")
        hf.save_pretrained(source)
        if tokenizer is not None:
            tokenizer.save_pretrained(source)  # a transformers BLIP-2 repository holds the LLM's tokenizer
        converted = convert_transformers_blip2(source, tmp_path_factory.mktemp(f"ours_{kind}"))
        ours = load_converted_blip2(converted)
        out[kind] = (hf, source, ours, json.loads((converted / "conversion.json").read_text()))
    return out


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def hf_ids(ours: Blip2ForGeneration, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What transformers' processor gives: ``<image> x Q`` then the tokenised text (right-padded)."""
    tokens = ours.tokenizer(texts, padding="longest", padding_side="right", return_tensors="pt")
    image = torch.full((len(texts), Q), len(ours.tokenizer), dtype=torch.long)
    mask = torch.cat([torch.ones_like(image), tokens.attention_mask], dim=1)
    return torch.cat([image, tokens.input_ids], dim=1), mask


@torch.no_grad()
def image_outputs(hf, ours, pixels):
    """(transformers, ours) image embeddings after ln_vision and Q-Former query outputs."""
    expected = hf.vision_model(pixel_values=pixels).last_hidden_state
    queries = hf.qformer(
        query_embeds=hf.query_tokens.expand(len(pixels), -1, -1), encoder_hidden_states=expected
    ).last_hidden_state
    embeds = ours.image_encoder(pixels)
    return (expected, queries), (embeds, ours.qformer(image_embeds=embeds).last_hidden_state)


@torch.no_grad()
def retrieval_scores(model, pixels, ids, mask, transformers_model: bool):
    """ITC similarities ``(I, T)`` and ITM logits ``(B, 2)`` of either side."""
    if transformers_model:
        itc = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_image
        itm = model(
            pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True
        )
        return itc, itm.logits_per_image
    itc = model.similarity(model.encode_image(pixels), model.encode_text(ids, mask))
    return itc, model.itm_logits(ids, mask, image_embeds=model.forward_image(pixels))


@torch.no_grad()
def lm_logits(model, ids, mask, pixels, transformers_model: bool, decoder_ids=None):
    """LM logits of ``[queries; text]`` (decoder-only: every position) of either side."""
    if transformers_model:
        return model(
            pixel_values=pixels, input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids
        ).logits
    embeds = torch.cat([model.query_embeds(pixels), model.llm.get_input_embeddings()(ids[:, Q:])], dim=1)
    return model.llm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits


# --- transformers -> ours --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_report_names_expected_absent(pairs, kind):
    report = pairs[kind][3]
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["kind"] == ("retrieval" if kind == "retrieval" else "generation")
    fc_norm = [
        "image_encoder.visual_encoder.vit.fc_norm.weight",
        "image_encoder.visual_encoder.vit.fc_norm.bias",
    ]
    if kind == "retrieval":
        assert sorted(report["missing_expected"]) == sorted(
            [
                *fc_norm,
                "lm_head.dense.weight",
                "lm_head.dense.bias",
                "lm_head.norm.weight",
                "lm_head.norm.bias",
                "lm_head.decoder.bias",
                "temp",
            ]
        )
        assert "lm_head.decoder.weight" in report["loaded"]  # the tied word embeddings
    else:
        assert report["missing_expected"] == fc_norm
        assert "llm_proj.weight" in report["loaded"] and "qformer.query_tokens" in report["loaded"]
        assert "image_encoder.visual_encoder.vit.blocks.1.attn.q_bias" in report["loaded"]


@pytest.mark.parametrize("kind", KINDS)
def test_image_embeddings_and_query_outputs_match(pairs, kind):
    hf, _, ours, _ = pairs[kind]
    expected, got = image_outputs(hf, ours, images())
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_itc_similarity_and_itm_logits_match(pairs):
    hf, _, ours, _ = pairs["retrieval"]
    pixels = images()
    ids, mask = text_batch(batch=3)
    for e, g in zip(
        retrieval_scores(hf, pixels, ids, mask, True), retrieval_scores(ours, pixels, ids, mask, False)
    ):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", LLMS)
def test_lm_logits_and_loss_match(pairs, kind):
    hf, _, ours, _ = pairs[kind]
    pixels = images(2)
    text, text_output = ["what color is the shape?", "is there a circle?"], ["blue", "yes no"]
    batch = ours.text_batch(text, text_output)
    ids, mask = hf_ids(ours, [ours.tokenizer.decode(i, skip_special_tokens=True) for i in batch.input_ids])
    decoder = ours._shift_right(batch.labels) if ours.is_encoder_decoder else None
    expected = lm_logits(hf, ids, mask, pixels, True, decoder)
    # rtol: the tiny random gated-GELU T5 amplifies float32 rounding of the soft prompts to ~1.3e-5 in
    # logits of magnitude ~0.2 on transformers 5.13 (whose Q-Former attends eagerly); the loss below stays at ATOL
    torch.testing.assert_close(
        lm_logits(ours, ids, mask, pixels, False, decoder), expected, atol=ATOL, rtol=1e-4
    )
    with torch.no_grad():  # our training loss equals the cross entropy of transformers' logits on our labels
        loss = ours(pixels, text, text_output)
        ids, mask = (
            torch.cat([ids[:, :Q], batch.input_ids], 1),
            torch.cat([mask[:, :Q], batch.attention_mask], 1),
        )
        if ours.is_encoder_decoder:
            kw = {"labels": batch.labels, "decoder_attention_mask": batch.decoder_attention_mask}
            reference = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, **kw).loss
        else:  # position Q + t predicts text token t + 1
            logits = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits[:, Q:-1]
            reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels[:, 1:].flatten())
    torch.testing.assert_close(loss, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("kind", LLMS)
def test_generated_ids_and_text_match(pairs, kind, num_beams, monkeypatch):
    """transformers gets the processor's ids (``<image> x Q``, BOS + prompt for OPT, prompt + EOS for
    T5) and our stop ids (LAVIS stops OPT at a newline too)."""
    hf, _, ours, _ = pairs[kind]
    pixels = images(3)
    captured = {}

    def capture(name, fn):
        return lambda *args, **kw: captured.setdefault(name, fn(*args, **kw))

    monkeypatch.setattr(ours.llm, "generate", capture("llm.generate", ours.llm.generate))
    monkeypatch.setattr(blip2_llm, "generate_llm_ids", capture("ours", blip2_llm.generate_llm_ids))
    settings = {"num_beams": num_beams, "max_new_tokens": 6, "min_new_tokens": 2}
    if num_beams > 1:
        settings["length_penalty"] = 1.0
    texts = ours.generate(pixels, prompt="a photo of", **settings)
    ids, mask = hf_ids(ours, ["a photo of"] * 3)
    expected = hf.generate(
        pixel_values=pixels,
        input_ids=ids,
        attention_mask=mask,
        eos_token_id=ours._eos_ids,
        pad_token_id=ours.tokenizer.pad_token_id,
        do_sample=False,
        **settings,
    )
    if not ours.is_encoder_decoder:  # transformers returns the prompt first
        expected = expected[:, ids.shape[1] :]
    (path,) = captured  # an OPT LLM runs our decoding loop, T5 the LLM's generate
    assert path == ("ours" if kind == "opt" else "llm.generate")
    assert torch.equal(captured[path], expected)
    decoded = ours.tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert texts == [t.split("\n", 1)[0].strip() for t in decoded]
    assert len(set(texts)) > 1  # the generations depend on the image


# --- LAVIS -> ours ----------------------------------------------------------------------------------

# transformers -> LAVIS, written for this test apart from the loader's tables
TO_LAVIS = (
    (r"vision_model\.embeddings\.class_embedding", "visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "visual_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\.(.*)", r"visual_encoder.patch_embed.proj.\1"),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.(.*)",
        r"visual_encoder.blocks.\1.attn.proj.\2",
    ),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.(.*)", r"visual_encoder.blocks.\1.attn.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.(.*)", r"visual_encoder.blocks.\1.norm\2.\3"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(.*)", r"visual_encoder.blocks.\1.mlp.\2"),
    (r"vision_model\.post_layernorm\.(.*)", r"ln_vision.\1"),
    (r"qformer\.layernorm\.(.*)", r"Qformer.bert.embeddings.LayerNorm.\1"),
    (r"embeddings\.(.*)", r"Qformer.bert.embeddings.\1"),
    (
        r"qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.(.*)",
        r"Qformer.bert.encoder.layer.\1.\2.self.\3",
    ),
    (r"qformer\.encoder\.(.*)", r"Qformer.bert.encoder.\1"),
    (r"vision_projection\.(.*)", r"vision_proj.\1"),
    (r"text_projection\.(.*)", r"text_proj.\1"),
    (r"language_projection\.(.*)", r"{llm}_proj.\1"),
    (r"language_model\.(.*)", r"{llm}_model.\1"),
    (r"(query_tokens|itm_head\..*)", r"\1"),
)


def lavis_state(hf, llm: str = "opt") -> dict[str, torch.Tensor]:
    """A LAVIS checkpoint of ``hf``'s weights: split q/v biases; stage-1 ITG head and ``temp`` added."""
    state = {}
    for key, value in hf.state_dict().items():
        name = next(re.sub(p, r, key).format(llm=llm) for p, r in TO_LAVIS if re.fullmatch(p, key))
        if name.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            state[name.replace("qkv.bias", "q_bias")], state[name.replace("qkv.bias", "v_bias")] = q, v
        else:
            state[name] = value
    width, vocab = hf.config.qformer_config.hidden_size, hf.config.qformer_config.vocab_size
    head = "Qformer.cls.predictions."
    state.update(
        {
            f"{head}transform.dense.weight": torch.randn(width, width),
            f"{head}transform.dense.bias": torch.randn(width),
            f"{head}transform.LayerNorm.weight": torch.randn(width),
            f"{head}transform.LayerNorm.bias": torch.randn(width),
            f"{head}bias": torch.randn(vocab),
            "temp": torch.tensor(0.05),
        }
    )
    if "Qformer.bert.embeddings.word_embeddings.weight" in state:
        state[f"{head}decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"]
    return state


def test_lavis_retrieval_checkpoint_into_a_fused_bias_vit(pairs):
    """LAVIS's q_bias/v_bias are fused into the qkv bias of timm's plain ViT: same ITC/ITM scores."""
    hf, _, converted, _ = pairs["retrieval"]
    vision = VisionConfig("vit_base_patch16_224", image_size=32, final_norm=False, timm_kwargs=TIMM_VIT)
    ours = Blip2Model(
        Blip2Config(vision=vision, qformer=converted.config.qformer, embed_dim=16, ln_vision_eps=1e-6)
    )
    state = lavis_state(hf)
    report = load_lavis_blip2(ours.eval(), state)
    assert report.missing == report.unexpected == report.missing_expected == []
    assert report.ignored == []
    assert "image_encoder.visual_encoder.vit.blocks.0.attn.qkv.bias" in report.loaded
    torch.testing.assert_close(ours.temp, torch.tensor([0.05]))
    torch.testing.assert_close(ours.lm_head.dense.bias, state["Qformer.cls.predictions.transform.dense.bias"])
    pixels = images()
    ids, mask = text_batch(batch=3)
    for e, g in zip(
        retrieval_scores(hf, pixels, ids, mask, True), retrieval_scores(ours, pixels, ids, mask, False)
    ):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", LLMS)
def test_lavis_generation_checkpoint_loads_to_the_same_outputs(pairs, kind, tmp_path):
    """As LAVIS saves it: no LLM (it comes from config.llm); stage-1-only keys ignored and listed."""
    hf, _, converted, _ = pairs[kind]
    state = lavis_state(hf, kind)
    state = {k: v for k, v in state.items() if not k.startswith(f"{kind}_model.")}
    torch.save({"model": state}, tmp_path / "blip2.pth")
    ours = Blip2ForGeneration(converted.config).eval()  # the same LLM directory; random ViT, Q-Former
    report = load_lavis_blip2(ours, tmp_path / "blip2.pth")
    assert report.missing == report.unexpected == []
    assert {k.split(".")[0] for k in report.missing_expected} == {"llm", "image_encoder"}  # + Eva's fc_norm
    assert sorted(report.ignored) == sorted(k for k in state if k.startswith("Qformer.cls.") or k == "temp")
    expected, got = image_outputs(hf, ours, images())
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        ours.query_embeds(images()), converted.query_embeds(images()), atol=ATOL, rtol=0
    )
    without_vit = {k: v for k, v in state.items() if not k.startswith("visual_encoder.")}
    report = load_lavis_blip2(Blip2ForGeneration(converted.config), without_vit)
    assert "image_encoder.visual_encoder.vit.blocks.0.attn.qkv.weight" in report.missing_expected


# --- ours -> transformers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_export_loads_in_transformers_with_the_same_outputs(pairs, kind, tmp_path):
    hf, _, ours, _ = pairs[kind]
    cls = type(hf)
    export_transformers_blip2(ours, tmp_path / "hf")
    again, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    again.eval()
    pixels = images()
    expected, got = image_outputs(again, ours, pixels)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)
    if kind == "retrieval":
        ids, mask = text_batch(batch=3)
        for e, g in zip(
            retrieval_scores(again, pixels, ids, mask, True), retrieval_scores(ours, pixels, ids, mask, False)
        ):
            torch.testing.assert_close(g, e, atol=ATOL, rtol=0)
        return
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.convert_tokens_to_ids("<image>") == again.config.image_token_index == len(ours.tokenizer)
    ids, mask = hf_ids(ours, ["a photo of a", "what shape is"])
    decoder = ids[:, Q : Q + 3] if kind == "t5" else None
    torch.testing.assert_close(
        lm_logits(ours, ids, mask, pixels[:2], False, decoder),
        lm_logits(again, ids, mask, pixels[:2], True, decoder),
        atol=ATOL,
        rtol=0,
    )


def test_export_of_a_converted_directory(pairs, tmp_path):
    """``export_transformers_blip2`` takes our converted directory too; the weights come back unchanged
    but for the key part of the ViT's qkv bias, which EVA lacks (it changes no output): zero."""
    hf, source, _, _ = pairs["retrieval"]
    ours_dir = convert_transformers_blip2(source, tmp_path / "ours")
    export_transformers_blip2(ours_dir, tmp_path / "hf")
    again = transformers.Blip2ForImageTextRetrieval.from_pretrained(tmp_path / "hf").state_dict()
    for key, value in hf.state_dict().items():
        if key.endswith("qkv.bias"):
            value = value.clone()
            value[48:96] = 0
        assert torch.equal(again[key], value), key


def test_a_tokenizer_holding_image_keeps_its_id_through_conversion_and_export(tmp_path):
    """The released tokenizers hold ``<image>`` at ``image_token_index`` (one past the LLM's words):
    the export keeps that id, so transformers puts the queries where its processor's ``<image>``
    tokens are and the exported model computes the source's logits, which depend on the image."""
    torch.manual_seed(SEEDS["opt"])
    tokenizer = tokenizer_for("opt", train_word_tokenizer(DEFAULT_TEXTS))
    config = hf_config("opt", tokenizer)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_index
    hf = randomise(transformers.Blip2ForConditionalGeneration(config))
    hf.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    ours_dir = convert_transformers_blip2(tmp_path / "src", tmp_path / "ours")
    export_transformers_blip2(ours_dir, tmp_path / "from_dir")  # the recorded id
    export_transformers_blip2(load_converted_blip2(ours_dir), tmp_path / "from_model")  # the tokenizer's
    pixels = images(2)
    for out in ("from_dir", "from_model"):
        again = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / out).eval()
        exported = transformers.AutoTokenizer.from_pretrained(tmp_path / out)
        image = exported.convert_tokens_to_ids("<image>")
        assert image == again.config.image_token_index == config.image_token_index
        text = exported(["a photo of a", "what shape is"], padding="longest", return_tensors="pt")
        ids = torch.cat([torch.full((2, Q), image), text.input_ids], dim=1)
        mask = torch.cat([torch.ones(2, Q, dtype=torch.long), text.attention_mask], dim=1)
        got = lm_logits(again, ids, mask, pixels, True)
        # rtol: these logits reach ~8, where the dropped ViT key bias changes fp32 rounding by 1.2e-5
        torch.testing.assert_close(got, lm_logits(hf, ids, mask, pixels, True), atol=ATOL, rtol=ATOL)
        assert (lm_logits(again, ids, mask, pixels.flip(0), True) - got).abs().amax() > 0.1
    recorded = json.loads((ours_dir / "conversion.json").read_text())["image_token_index"]
    assert recorded == config.image_token_index


def test_an_image_token_the_tokenizer_cannot_hold_is_refused_before_writing(pairs, tmp_path):
    """The source's ``image_token_index`` is reused; a tokenizer ``<image>`` at another id is an error."""
    hf, source, ours, _ = pairs["opt"]
    spare = len(ours.tokenizer) + 1  # an embedding row, but not where a new <image> would go
    with pytest.raises(ValueError, match=f"<image> would be id {spare - 1} but image_token_index is {spare}"):
        export_blip2_to_transformers(ours, tmp_path / "asked", image_token_id=spare)
    values = json.loads((source / "config.json").read_text())
    values["image_token_index"] = spare
    hf.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "config.json").write_text(json.dumps(values))
    ours.tokenizer.save_pretrained(tmp_path / "src")
    converted = convert_transformers_blip2(tmp_path / "src", tmp_path / "ours")
    with pytest.raises(ValueError, match=f"image_token_index is {spare}"):
        export_transformers_blip2(converted, tmp_path / "recorded")
    assert not (tmp_path / "asked").exists() and not (tmp_path / "recorded").exists()


# --- errors and layouts -----------------------------------------------------------------------------


def test_shape_mismatch_names_the_key_and_both_shapes(pairs):
    hf, _, ours, _ = pairs["retrieval"]
    state = dict(hf.state_dict())
    state["itm_head.weight"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match=r"'itm_head.weight'.*\(3, 32\).*\(2, 32\)"):
        load_transformers_blip2(ours, state)


def test_missing_and_unexpected_keys_are_named(pairs):
    hf, _, ours, _ = pairs["retrieval"]
    state = {k: v for k, v in hf.state_dict().items() if k != "qformer.layernorm.bias"}
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"qformer\.embeddings\.norm\.bias.*bogus\.weight"):
        load_transformers_blip2(ours, state)
    report = load_transformers_blip2(ours, state, strict=False)
    assert report.missing == ["qformer.embeddings.norm.bias"] and report.unexpected == ["bogus.weight"]


def test_our_directory_with_a_key_missing_loads_only_when_not_strict(pairs, tmp_path):
    from safetensors.torch import load_file, save_file

    _, source, ours, _ = pairs["opt"]
    converted = convert_transformers_blip2(source, tmp_path / "ours")
    weights = load_file(converted / "model.safetensors")
    del weights["llm_proj.bias"]
    save_file(weights, converted / "model.safetensors")
    with pytest.raises(KeyError, match=r"missing keys \['llm_proj\.bias'\]"):
        Blip2ForGeneration.from_pretrained(converted)
    loaded = Blip2ForGeneration.from_pretrained(converted, strict=False)
    assert torch.equal(loaded.llm_proj.weight, ours.llm_proj.weight)
    from lightning_blip.weights.transformers_blip2 import load_our_blip2

    report = load_our_blip2(Blip2ForGeneration(loaded.config), converted / "model.safetensors", strict=False)
    assert report.missing == ["llm_proj.bias"] and report.unexpected == []
    assert report.missing_expected and all(k.startswith("llm.") for k in report.missing_expected)


def test_qkv_bias_split_and_fuse_round_trip():
    prefix = r"blocks\.\d+\.attn\."
    q, k, v = torch.randn(3, 8).unbind()
    split = match_qkv_bias({"blocks.0.attn.qkv.bias": torch.cat([q, k, v]), "x": q}, prefix, split=True)
    assert split.keys() == {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "x"}
    assert torch.equal(split["blocks.0.attn.q_bias"], q) and torch.equal(split["blocks.0.attn.v_bias"], v)
    fused = match_qkv_bias(split, prefix, split=False)["blocks.0.attn.qkv.bias"]
    assert torch.equal(fused, torch.cat([q, torch.zeros(8), v]))  # no key bias: EVA has none


def test_config_takes_the_vision_eps_and_builds_the_sizes(tmp_path):
    config = hf_config("retrieval")
    config.vision_config.layer_norm_eps = 1e-5
    transformers.Blip2ForImageTextRetrieval(config).save_pretrained(tmp_path)
    ours, notes = blip2_config_from_transformers(tmp_path)
    assert notes == []  # the blocks and ln_vision take transformers' eps; 1e-5 is also LAVIS's ln_vision
    model = Blip2Model(ours)
    vit = model.image_encoder.visual_encoder.vit
    assert model.image_encoder.ln_vision.eps == 1e-5 and len(vit.blocks) == 2
    assert {m.eps for m in vit.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert model.image_encoder.visual_encoder.vit.blocks[0].mlp.fc1.out_features == 96
    assert (ours.qformer.num_query_tokens, ours.embed_dim, ours.qformer.text) == (Q, 16, True)
    generation = hf_config("opt", tokenizer_for("opt", train_word_tokenizer(DEFAULT_TEXTS)))
    generation.architectures = ["Blip2ForConditionalGeneration"]
    generation.save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="llm="):
        blip2_config_from_transformers(tmp_path / "g")
    ours, _ = blip2_config_from_transformers(tmp_path / "g", llm="/llm")
    assert (ours.llm, ours.llm_kind, ours.qformer.text, ours.ln_vision_eps) == ("/llm", "causal", False, 1e-6)
    assert ours.vision.layer_norm_eps == 1e-6


def test_export_warns_when_ln_vision_eps_differs_from_the_blocks(pairs, tmp_path):
    """LAVIS's ln_vision eps (1e-5, our default) has no place in transformers' config; a plain timm ViT
    (fused qkv bias) exports as it is."""
    _, _, converted, _ = pairs["retrieval"]
    vision = VisionConfig("vit_base_patch16_224", image_size=32, final_norm=False, timm_kwargs=TIMM_VIT)
    ours = Blip2Model(Blip2Config(vision=vision, qformer=converted.config.qformer, embed_dim=16)).eval()
    with pytest.warns(UserWarning, match="ln_vision uses 1e-05"):
        export_transformers_blip2(ours, tmp_path)
    again = transformers.Blip2ForImageTextRetrieval.from_pretrained(tmp_path)
    assert again.config.vision_config.layer_norm_eps == 1e-6
    bias = "vision_model.encoder.layers.1.self_attn.qkv.bias"
    assert torch.equal(
        again.state_dict()[bias], ours.state_dict()["image_encoder.visual_encoder.vit.blocks.1.attn.qkv.bias"]
    )


# --- from_pretrained: the format is read from the path ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_reads_the_transformers_directory_and_our_converted_one(pairs, kind, tmp_path):
    """A generation directory is its own LLM source: ``config.llm`` is the directory itself."""
    hf, source, converted, report = pairs[kind]
    cls = Blip2Model if kind == "retrieval" else Blip2ForGeneration
    direct = cls.from_pretrained(source).eval()
    if kind != "retrieval":
        assert direct.config.llm == str(source)
    state, own = converted.state_dict(), direct.state_dict()
    for key in report["loaded"]:  # the rest (ITG head of a retrieval model) keeps its random init
        torch.testing.assert_close(own[key], state[key], atol=0, rtol=0, msg=key)
    expected, _ = image_outputs(hf, converted, images())
    for e, g in zip(expected, image_outputs(hf, direct, images())[1]):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)

    converted_dir = tmp_path / "ours"
    convert_transformers_blip2(source, converted_dir)
    again = cls.from_pretrained(converted_dir).state_dict()
    for key in report["loaded"]:
        torch.testing.assert_close(again[key], state[key], atol=0, rtol=0, msg=key)
    other = Blip2ForGeneration if kind == "retrieval" else Blip2Model
    with pytest.raises(ValueError, match=f"not a {other.__name__}"):
        other.from_pretrained(converted_dir)


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_from_pretrained_reads_each_tensor_of_a_transformers_directory_once(pairs, kind, monkeypatch):
    """The LLM takes ``language_model.*`` when it is built; the rest is read without them."""
    from safetensors import safe_open

    from lightning_blip.weights import checkpoint_io

    _, source, _, _ = pairs[kind]
    with safe_open(str(source / "model.safetensors"), "pt") as f:
        in_file = sorted(f.keys())
    reads: list[str] = []

    class CountingFile:
        def __init__(self, *args, **kwargs):
            self.file = safe_open(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_tensor(self, name):
            reads.append(name)
            return self.file.get_tensor(name)

    load_file = checkpoint_io.load_file
    monkeypatch.setattr(checkpoint_io, "safe_open", CountingFile)
    monkeypatch.setattr(checkpoint_io, "load_file", lambda *a: reads.extend(state := load_file(*a)) or state)
    Blip2ForGeneration.from_pretrained(source)
    assert sorted(reads) == in_file


def test_from_pretrained_reads_a_lavis_file_with_the_config_given(pairs, tmp_path):
    hf, _, converted, _ = pairs["opt"]
    state = {k: v for k, v in lavis_state(hf, "opt").items() if not k.startswith("opt_model.")}
    torch.save({"model": state}, tmp_path / "blip2.pth")
    with pytest.raises(ValueError, match="pass config="):
        Blip2ForGeneration.from_pretrained(tmp_path / "blip2.pth")
    ours = Blip2ForGeneration.from_pretrained(tmp_path / "blip2.pth", config=converted.config).eval()
    torch.testing.assert_close(
        ours.query_embeds(images()), converted.query_embeds(images()), atol=ATOL, rtol=0
    )


def _gated_ffn_by_hand(ffn: torch.nn.Module, x: torch.Tensor, approximate: str) -> torch.Tensor:
    """T5's gated FFN ``wo(gelu(wi_0 x) * wi_1 x)`` with the exact GELU or its tanh approximation."""
    return ffn.wo(F.gelu(ffn.wi_0(x), approximate=approximate) * ffn.wi_1(x))


@torch.no_grad()
def test_a_lavis_t5_file_runs_exact_gelu_and_a_transformers_directory_keeps_gelu_new(pairs, tmp_path):
    """LAVIS's ``blip2_t5.py`` sets ``dense_act_fn="gelu"`` on FlanT5's config (``gated-gelu`` ->
    ``gelu_new`` in transformers): a LAVIS file computes with it, a transformers directory as shipped."""
    from lightning_blip.convert import command as convert

    hf, source, converted, _ = pairs["t5"]
    state = {k: v for k, v in lavis_state(hf, "t5").items() if not k.startswith("t5_model.")}
    torch.save({"model": state}, tmp_path / "blip2.pth")
    (tmp_path / "config.json").write_text(json.dumps(asdict(converted.config)))
    convert.main(["--model", "blip2", "--from", "lavis", "--to", "ours", "--config", str(tmp_path / "config.json"),
                  str(tmp_path / "blip2.pth"), str(tmp_path / "ours")])  # fmt: skip
    exact = {
        "lavis file": Blip2ForGeneration.from_pretrained(tmp_path / "blip2.pth", config=converted.config),
        "converted from lavis": Blip2ForGeneration.from_pretrained(tmp_path / "ours"),
    }
    tanh = {
        "transformers directory": Blip2ForGeneration.from_pretrained(source),
        "converted from transformers": converted,
        "lavis file, as shipped by choice": Blip2ForGeneration.from_pretrained(
            tmp_path / "blip2.pth", config=replace(converted.config, llm_dense_act_fn="gelu_new")
        ),
    }
    x = 3 * torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(0))
    for approximate, models in (("none", exact), ("tanh", tanh)):
        for name, model in models.items():
            ffn = model.llm.encoder.block[0].layer[-1].DenseReluDense
            torch.testing.assert_close(ffn(x), _gated_ffn_by_hand(ffn, x, approximate), msg=name)
    gap = (_gated_ffn_by_hand(ffn, x, "none") - _gated_ffn_by_hand(ffn, x, "tanh")).abs().max()
    assert gap > 1e-3  # the two GELUs are told apart at assert_close's tolerance


def test_convert_command_for_blip2_both_ways(pairs, tmp_path):
    from lightning_blip.convert import command as convert

    hf, source, converted, _ = pairs["t5"]
    convert.main(
        ["--model", "blip2", "--from", "transformers", "--to", "ours", str(source), str(tmp_path / "ours")]
    )
    convert.main(
        [
            "--model",
            "blip2",
            "--from",
            "ours",
            "--to",
            "transformers",
            str(tmp_path / "ours"),
            str(tmp_path / "hf"),
        ]
    )
    back = type(hf).from_pretrained(tmp_path / "hf").eval()
    expected, got = image_outputs(hf, converted, images())[0], image_outputs(back, converted, images())[0]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_convert_command_for_a_lavis_file_and_a_lightning_export(pairs, tmp_path):
    from lightning_blip.convert import command as convert

    hf, _, converted, _ = pairs["opt"]
    state = {k: v for k, v in lavis_state(hf, "opt").items() if not k.startswith("opt_model.")}
    torch.save({"model": state}, tmp_path / "blip2.pth")
    (tmp_path / "config.json").write_text(json.dumps(asdict(converted.config)))
    with pytest.raises(SystemExit):
        convert.main(
            [
                "--model",
                "blip2",
                "--from",
                "lavis",
                "--to",
                "ours",
                str(tmp_path / "blip2.pth"),
                str(tmp_path / "o"),
            ]
        )
    convert.main(["--model", "blip2", "--from", "lavis", "--to", "ours", "--config", str(tmp_path / "config.json"),
                  str(tmp_path / "blip2.pth"), str(tmp_path / "ours")])  # fmt: skip
    ours = Blip2ForGeneration.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(
        ours.query_embeds(images()), converted.query_embeds(images()), atol=ATOL, rtol=0
    )
