"""BLIP-2 stage 2 (frozen LLM): training loss, labels, prefix split, generation, stage-1 loading."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import tiny_vision
from safetensors.torch import save_file

from lightning_blip.losses.lm import IGNORE_INDEX
from lightning_blip.models.blip2 import (
    Blip2Config,
    Blip2ForGeneration,
    Blip2LLMConfig,
    Blip2Model,
    QFormerConfig,
)
from lightning_blip.models.blip2 import llm as blip2_llm
from lightning_blip.models.blip2.llm import VQA_PROMPT, context_labels, random_prefix_split
from lightning_blip.models.blip2.small_llm import save_tiny_llm

KINDS = ("opt", "gpt2", "llama", "t5")
# different LLM widths so that llm_proj's output width is checked against the LLM, not the Q-Former (32)
LLM_WIDTH = {"opt": 32, "gpt2": 48, "llama": 40, "t5": 24}
CAPTIONS = ["a red circle", "a dog riding a horse in the park"]


def tiny_qformer(text: bool = False) -> QFormerConfig:
    return QFormerConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        num_query_tokens=4,
        dropout=0.0,
        attention_dropout=0.0,
        text=text,
    )


def stage2_config(llm_dir, **kw) -> Blip2LLMConfig:
    return Blip2LLMConfig(vision=tiny_vision(), qformer=tiny_qformer(), llm=str(llm_dir), **kw)


@pytest.fixture(scope="session")
def llm_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_llms")
    return {kind: save_tiny_llm(kind, root / kind, hidden_size=LLM_WIDTH[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def models(llm_dirs) -> dict[str, Blip2ForGeneration]:
    """One model per LLM kind, prompt "a photo of", in eval mode."""
    out = {}
    for kind, directory in llm_dirs.items():
        torch.manual_seed(0)
        model = Blip2ForGeneration(stage2_config(directory, prompt="a photo of")).eval()
        with torch.no_grad():  # sharper random LLMs give varied, input-dependent generations
            for p in model.llm.parameters():
                if p.dim() == 2:
                    p.mul_(4.0)
        tok = model.tokenizer
        model.llm.generation_config.suppress_tokens = [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id]
        out[kind] = model
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_trains_qformer_projection_and_ln_vision_only(models, kind):
    model = models[kind]
    model.train()
    try:
        assert not model.llm.training and not model.image_encoder.visual_encoder.training
        assert (
            model.llm_proj.out_features == LLM_WIDTH[kind] == model.llm.get_input_embeddings().weight.shape[1]
        )
        loss = model(torch.randn(2, 3, 32, 32), CAPTIONS)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        trainable = ("qformer.", "llm_proj.", "image_encoder.ln_vision.")
        for name, p in model.named_parameters():
            if name.endswith("cross_attn.attention.kv.key.bias"):  # the softmax cancels it: zero gradient
                assert p.grad is not None and not p.grad.any(), name
            elif name.startswith(trainable):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert name.startswith(("llm.", "image_encoder.visual_encoder."))
                assert not p.requires_grad and p.grad is None, name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_loss_equals_the_llms_own_loss_on_our_labels(models, kind):
    """Our shift/slicing (decoder-only) and decoder inputs (encoder-decoder) match transformers' loss."""
    model = models[kind]
    pixel_values = torch.randn(2, 3, 32, 32)
    text, text_output = ["what color is the shape?", "is there a circle?"], ["blue", "yes"]
    with torch.no_grad():
        loss = model(pixel_values, text, text_output)
        total, count = model(pixel_values, text, text_output, reduction="sum")
        batch = model.text_batch(text, text_output)
        inputs, query_mask = model._embed(batch.input_ids, model.query_embeds(pixel_values))
        attention_mask = torch.cat([query_mask, batch.attention_mask], dim=1)
        if model.is_encoder_decoder:
            kw = {"labels": batch.labels, "decoder_attention_mask": batch.decoder_attention_mask}
        else:
            kw = {"labels": torch.cat([torch.full_like(query_mask, IGNORE_INDEX), batch.labels], dim=1)}
        reference = model.llm(inputs_embeds=inputs, attention_mask=attention_mask, **kw).loss
    torch.testing.assert_close(loss, reference)
    assert count == (batch.labels != IGNORE_INDEX).sum() > 0
    torch.testing.assert_close(total / count, loss)


def test_causal_labels_ignore_bos_prompt_and_padding(models):
    model = models["opt"]  # prompt "a photo of"; the tokenizer prepends BOS
    ids = model.tokenizer.convert_tokens_to_ids
    bos, pad, nl = model.tokenizer.bos_token_id, model.tokenizer.pad_token_id, ids("\n")
    a, photo, of, dog, red, circle, is_, big = ids(["a", "photo", "of", "dog", "red", "circle", "is", "big"])
    batch = model.text_batch(["a dog", "Red circle is big"])
    assert batch.input_ids.tolist() == [
        [bos, a, photo, of, a, dog, nl, pad, pad],
        [bos, a, photo, of, red, circle, is_, big, nl],
    ]
    assert batch.labels.tolist() == [
        [-100] * 4 + [a, dog, nl, -100, -100],
        [-100] * 4 + [red, circle, is_, big, nl],
    ]

    pairs = model.text_batch(["is there a dog?", "big?"], ["yes", "no"])
    yes, no = ids(["yes", "no"])
    assert pairs.labels.tolist() == [[-100] * 9 + [yes, nl], [-100] * 6 + [no, nl] + [-100] * 3]

    no_bos = models["gpt2"].text_batch(["a dog"])  # GPT-2 adds no BOS: the prompt is 3 tokens
    assert no_bos.labels.tolist() == [[-100] * 3 + [a, dog, nl]]

    ids_ = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert context_labels(ids_, mask, torch.tensor([1, 0])).tolist() == [[-100, 6, 7, 8], [5, 6, -100, -100]]


@torch.no_grad()
def test_empty_prompt_scores_bos_as_lavis_unless_told(llm_dirs):
    """LAVIS masks BOS + prompt only ``if self.prompt``: with an empty prompt the last query position
    is trained to predict BOS. Written out here position by position on the LLM's own logits."""
    torch.manual_seed(0)
    lavis = Blip2ForGeneration(stage2_config(llm_dirs["opt"])).eval()
    ours = Blip2ForGeneration(stage2_config(llm_dirs["opt"], score_bos=False)).eval()
    ours.load_state_dict(lavis.state_dict())
    ids = lavis.tokenizer.convert_tokens_to_ids
    bos, pad, nl = lavis.tokenizer.bos_token_id, lavis.tokenizer.pad_token_id, ids("\n")
    a, dog, red, circle = ids(["a", "dog", "red", "circle"])
    texts = ["a dog", "a red circle"]
    batch = lavis.text_batch(texts)
    assert batch.input_ids.tolist() == [[bos, a, dog, nl, pad], [bos, a, red, circle, nl]]
    assert batch.labels.tolist() == [[bos, a, dog, nl, -100], [bos, a, red, circle, nl]]
    assert ours.text_batch(texts).labels.tolist() == [[-100, a, dog, nl, -100], [-100, a, red, circle, nl]]

    pixels = torch.randn(2, 3, 32, 32)
    queries = lavis.query_embeds(pixels)
    Q = queries.shape[1]
    inputs = torch.cat([queries, lavis.llm.get_input_embeddings()(batch.input_ids)], dim=1)
    mask = torch.cat([torch.ones(2, Q, dtype=torch.long), batch.attention_mask], dim=1)
    logp = lavis.llm(inputs_embeds=inputs, attention_mask=mask).logits.log_softmax(-1)
    # (row, position whose logits score the token, token): the last query (Q - 1) scores BOS
    terms = [(0, Q - 1, bos), (0, Q, a), (0, Q + 1, dog), (0, Q + 2, nl)]
    terms += [(1, Q - 1, bos), (1, Q, a), (1, Q + 1, red), (1, Q + 2, circle), (1, Q + 3, nl)]
    nll = torch.stack([-logp[row, position, token] for row, position, token in terms])
    torch.testing.assert_close(lavis(pixels, texts), nll.mean())
    without_bos = [i for i, (_, _, token) in enumerate(terms) if token != bos]
    torch.testing.assert_close(ours(pixels, texts), nll[without_bos].mean())

    # with a prompt, BOS and the prompt are never scored, either way
    for score_bos in (True, False):
        prompted = Blip2ForGeneration(
            stage2_config(llm_dirs["opt"], prompt="a photo of", score_bos=score_bos)
        )
        assert prompted.text_batch(["a dog"]).labels.tolist() == [[-100] * 4 + [a, dog, nl]]


def test_opt_stops_at_the_newline_alone_as_lavis_unless_told(models, llm_dirs):
    """LAVIS: ``eos_token_id = tokenizer("\\n", add_special_tokens=False).input_ids[0]``, nothing else."""
    for kind in ("opt", "gpt2", "llama"):
        tok = models[kind].tokenizer
        assert models[kind]._eos_ids == [tok("\n", add_special_tokens=False).input_ids[0]]
    t5 = models["t5"]
    assert t5._eos_ids == [t5.tokenizer.eos_token_id]  # an encoder-decoder stops at EOS
    also_eos = Blip2ForGeneration(stage2_config(llm_dirs["opt"], stop_at_eos=True))
    tok = also_eos.tokenizer
    assert sorted(also_eos._eos_ids) == sorted([tok.eos_token_id, tok.convert_tokens_to_ids("\n")])


def test_prefix_split_at_a_random_word_boundary_reproducibly():
    texts = ["one two three four five", "single", "a  b"]
    cuts = set()
    for seed in range(40):
        prefixes, suffixes = random_prefix_split(texts, torch.Generator().manual_seed(seed))
        again = random_prefix_split(texts, torch.Generator().manual_seed(seed))
        assert (prefixes, suffixes) == again
        assert f"{prefixes[0]} {suffixes[0]}" == texts[0] and prefixes[0] and suffixes[0]
        assert (prefixes[1], suffixes[1]) == ("", "single")
        assert (prefixes[2], suffixes[2]) == ("a", "b")
        cuts.add(len(prefixes[0].split()))
    assert cuts == {1, 2, 3, 4}  # every boundary inside the text, never an empty side


def test_seq2seq_batch_uses_pairs_as_given_and_splits_otherwise(models):
    model = models["t5"]  # prompt "a photo of"; T5 appends EOS
    tok, eos = model.tokenizer, model.tokenizer.eos_token_id
    pairs = model.text_batch(["what color is the shape?", "is there a dog?"], ["blue", "yes no"])
    assert tok.batch_decode(pairs.input_ids, skip_special_tokens=True) == [
        "a photo of what color is the shape?",
        "a photo of is there a dog?",
    ]
    assert pairs.labels.tolist() == [tok("blue").input_ids + [-100], tok("yes no").input_ids]
    assert pairs.labels[0, 1] == eos

    text = ["a dog riding a horse in the park", "circle"]
    split = model.text_batch(text, generator=torch.Generator().manual_seed(3))
    prefixes, suffixes = random_prefix_split(text, torch.Generator().manual_seed(3))
    expected = model.text_batch(prefixes, suffixes)
    for got, want in zip(split, expected):
        assert torch.equal(got, want)
    assert tok.decode(split.input_ids[1], skip_special_tokens=True) == "a photo of"  # one word: empty prefix


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_generation_equals_one_by_one(models, kind, num_beams):
    model = models[kind]
    pixel_values = torch.randn(3, 3, 32, 32)
    prompts = ["what color is the shape?", "is there a circle?", ""]
    kw = {"num_beams": num_beams, "min_new_tokens": 3, "max_new_tokens": 6}
    batched = model.generate(pixel_values, prompts, **kw)
    single = [model.generate(pixel_values[i : i + 1], prompts[i], **kw)[0] for i in range(3)]
    assert isinstance(batched, list) and all(isinstance(t, str) and t for t in batched)
    assert batched == single
    if num_beams > 1:
        assert (
            len(model.generate(pixel_values, num_beams=num_beams, max_new_tokens=2, num_return_sequences=2))
            == 6
        )


@pytest.mark.filterwarnings("error:.*deprecated:FutureWarning")  # e.g. the cache argument's old name
@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
def test_beams_share_the_prefix_cache_and_generate_what_the_llm_generates_alone(models, kind, monkeypatch):
    """Decoder-only beam search runs [queries; prompt] once per image, and gives the LLM's own text."""
    model = models[kind]
    pixel_values = torch.randn(3, 3, 32, 32)
    prompts = ["what color is the shape?", "is there a circle?", ""]
    kw = {"num_beams": 3, "num_return_sequences": 2, "min_new_tokens": 3, "max_new_tokens": 6}
    inputs, mask = model.generation_inputs(pixel_values, prompts)
    alone = model.llm.generate(
        inputs_embeds=inputs, attention_mask=mask, eos_token_id=model._eos_ids,
        pad_token_id=model.tokenizer.pad_token_id, **kw,
    )  # fmt: skip
    expected = [
        t.split("\n", 1)[0].strip() for t in model.tokenizer.batch_decode(alone, skip_special_tokens=True)
    ]
    rows = []
    llm_forward = model.llm.forward
    recording = functools.wraps(llm_forward)(lambda *a, **k: rows.append(_rows(a, k)) or llm_forward(*a, **k))
    monkeypatch.setattr(model.llm, "forward", recording)  # wraps: generate() reads forward's signature
    assert model.generate(pixel_values, prompts, **kw) == expected
    assert rows[0] == (3, inputs.shape[1] - 1)  # the prefix, once per image
    assert all(r == (3 * 3, 1) for r in rows[1:])  # then one position per beam and step


def test_an_opt_llm_runs_our_decoding_loop_unless_an_option_needs_its_generate(models, monkeypatch):
    model = models["opt"]
    pixel_values = torch.randn(2, 3, 32, 32)
    ours = []
    decode = blip2_llm.generate_llm_ids
    monkeypatch.setattr(blip2_llm, "generate_llm_ids", lambda *a, **kw: ours.append(kw) or decode(*a, **kw))
    kw = {"num_beams": 2, "max_new_tokens": 4}
    model.generate(pixel_values, **kw)
    assert not ours  # the fixture's generation config suppresses tokens: a rule our loop does not run
    monkeypatch.setattr(model.llm.generation_config, "suppress_tokens", None)
    expected = model.generate(pixel_values, **kw)
    assert len(ours) == 1
    for other in ({"do_sample": True}, {"repetition_penalty": 1.3}):
        model.generate(pixel_values, **{**kw, **other})
    model.llm.train()  # dropout: only the LLM's own forward has it
    try:
        model.generate(pixel_values, **kw)
    finally:
        model.llm.eval()
    assert len(ours) == 1
    monkeypatch.setattr(model, "_decodes_itself", lambda *args: False)
    assert model.generate(pixel_values, **kw) == expected  # the LLM's generate: the same text


def _rows(args, kwargs) -> tuple[int, int]:
    embeds = kwargs.get("inputs_embeds")
    ids = kwargs.get("input_ids") if embeds is None else None
    return tuple((embeds if embeds is not None else ids).shape[:2])


def test_answer_formats_questions_with_the_vqa_prompt(models, monkeypatch):
    model = models["t5"]
    pixel_values = torch.randn(2, 3, 32, 32)
    answers = model.answer(pixel_values, ["what color?", "what shape?"])
    assert isinstance(answers, list) and len(answers) == 2
    assert model.answer(pixel_values, ["what color?"]) == model.answer(pixel_values, ["what color?"] * 2)
    with pytest.raises(ValueError, match="got 2 questions for 3 images"):
        model.answer(torch.randn(3, 3, 32, 32), ["what color?", "what shape?"])
    calls = []
    monkeypatch.setattr(model, "generate", lambda *args, **kw: calls.append((args, kw)) or ["x", "y"])
    model.answer(pixel_values, ["what color?", "what shape?"])
    ((args, kw),) = calls
    assert args[1] == ["Question: what color? Short answer:", "Question: what shape? Short answer:"]
    assert VQA_PROMPT == "Question: {} Short answer:"
    assert kw == {"num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "length_penalty": -1.0}


def test_load_stage1_from_blip2model_files(llm_dirs, tmp_path):
    stage1 = Blip2Model(
        Blip2Config(vision=tiny_vision(), qformer=tiny_qformer(text=True), embed_dim=16)
    ).eval()
    state = {k: v.clone() for k, v in stage1.state_dict().items()}  # clone: untie the LM head for safetensors
    save_file(state, str(tmp_path / "stage1.safetensors"))
    torch.save({"state_dict": {f"model.blip2.{k}": v for k, v in state.items()}}, tmp_path / "stage1.ckpt")

    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = stage1.query_output(stage1.forward_image(pixel_values)).last_hidden_state

    def query_output(model: Blip2ForGeneration) -> torch.Tensor:
        model.image_encoder.visual_encoder.load_state_dict(stage1.image_encoder.visual_encoder.state_dict())
        with torch.no_grad():
            return model.qformer(image_embeds=model.image_encoder(pixel_values)).last_hidden_state

    fresh = Blip2ForGeneration(stage2_config(llm_dirs["opt"])).eval()
    assert not torch.allclose(query_output(fresh), reference)
    report = fresh.load_stage1(tmp_path / "stage1.safetensors")
    torch.testing.assert_close(query_output(fresh), reference)
    assert "qformer.layers.0.ffn_query.output.weight" in report.loaded
    ignored = set(report.ignored)
    assert {
        "temp",
        "vision_proj.weight",
        "itm_head.bias",
        "qformer.embeddings.word_embeddings.weight",
    } <= ignored
    assert "qformer.layers.1.ffn.output.weight" in ignored and "image_encoder.ln_vision.weight" not in ignored

    from_lightning = Blip2ForGeneration(
        stage2_config(llm_dirs["opt"], stage1_checkpoint=str(tmp_path / "stage1.ckpt"))
    )
    torch.testing.assert_close(query_output(from_lightning.eval()), reference)

    bad = dict(state, **{"qformer.query_tokens": torch.zeros(1, 5, 32)})
    with pytest.raises(ValueError, match=r"qformer\.query_tokens.*\(1, 5, 32\).*\(1, 4, 32\)"):
        fresh.load_stage1(bad)
    missing = {k: v for k, v in state.items() if k != "qformer.layers.1.ffn_query.norm.bias"}
    with pytest.raises(KeyError, match=r"qformer\.layers\.1\.ffn_query\.norm\.bias"):
        fresh.load_stage1(missing)


def test_frozen_prefixes_and_trainable_state_dict(models):
    model = models["gpt2"]
    assert model.frozen_prefixes == ("image_encoder.visual_encoder.", "llm.")
    keys = set(model.trainable_state_dict())
    assert {"llm_proj.weight", "qformer.query_tokens", "image_encoder.ln_vision.weight"} <= keys
    assert not any(k.startswith(model.frozen_prefixes) for k in keys)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(model.frozen_prefixes)}


def test_config_round_trip(llm_dirs):
    config = stage2_config(llm_dirs["t5"], llm_dtype="bfloat16", prompt="a photo of")
    assert Blip2LLMConfig.from_dict(dataclasses.asdict(config)) == config
    with pytest.raises(ValueError, match="llm_dtype"):
        Blip2LLMConfig(llm_dtype="fp16")


def test_missing_llm_names_the_llm_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"llm=.*absent"):
        Blip2ForGeneration(stage2_config(tmp_path / "absent"))


def test_llm_dense_act_fn_is_checked_naming_the_field(llm_dirs):
    with pytest.raises(ValueError, match="llm_dense_act_fn.*'gelu_exact'"):
        stage2_config(llm_dirs["t5"], llm_dense_act_fn="gelu_exact")
    with pytest.raises(ValueError, match="llm_dense_act_fn='gelu'.*'opt'.*no dense_act_fn"):
        Blip2ForGeneration(stage2_config(llm_dirs["opt"], llm_dense_act_fn="gelu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_llm_is_cast_to_llm_dtype_on_gpu(llm_dirs):
    model = Blip2ForGeneration(stage2_config(llm_dirs["opt"])).cuda()
    assert model.llm.dtype == torch.float16 and model.llm_proj.weight.dtype == torch.float32
    pixel_values = torch.randn(2, 3, 32, 32, device="cuda")
    loss = model(pixel_values, CAPTIONS)
    loss.backward()
    assert torch.isfinite(loss) and model.llm_proj.weight.grad is not None
    assert len(model.eval().generate(pixel_values, num_beams=2, max_new_tokens=3)) == 2
