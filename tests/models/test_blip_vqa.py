"""BlipVQA: BLIP's weighted answer loss, cached decoding, first-token top-k ranking, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_text, tiny_vision

from lightning_blip.models.blip import BlipConfig, BlipModel, BlipVQA, QuestionStates
from lightning_blip.models.blip.vqa import tokenize_answers, tokenize_questions
from lightning_blip.models.shared.tokenizer import build_tokenizer

QUESTIONS = ["what color is the shape?", "is there a small circle on the left of the picture?", "how many?"]
ANSWERS = ["red", "blue", "yes", "no", "a big circle", "red circle", "green", "two"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def _config(std: float = 0.1, vision_width: int = 48, image_size: int = 32) -> BlipConfig:
    # a larger init than BERT's 0.02 so that a random model's answers differ between questions
    text = tiny_text(dropout=0.0, attention_dropout=0.0, initializer_range=std)
    vision = tiny_vision(image_size, timm_kwargs_extra={"embed_dim": vision_width})
    return BlipConfig(vision=vision, text=text, embed_dim=32)


def _model(**kw) -> BlipVQA:
    return BlipVQA(_config(**kw)).eval()


def _questions(model: BlipVQA, tokenizer, pixel_values: torch.Tensor) -> QuestionStates:
    ids, mask = tokenize_questions(tokenizer, QUESTIONS[: len(pixel_values)])
    return model.encode_questions(model.encode_image(pixel_values), ids, mask)


def _smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross entropy summed over positions, written out: (1-eps) NLL + eps mean(-log p)."""
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[:, None]).squeeze(-1)
    return ((1 - eps) * nll + eps * -logp.mean(-1)).sum()


def _answer_log_likelihood(
    model: BlipVQA, states: torch.Tensor, answer_ids: torch.Tensor, eps: float = 0.1
) -> torch.Tensor:
    """Minus the smoothed CE of one unpadded ``[CLS] ... [SEP]`` answer, given one question ``(1, Lq, D)``."""
    ids = answer_ids.clone()[None]
    ids[0, 0] = model.config.bos_token_id
    hidden = model.answer_decoder(ids, torch.ones_like(ids), "decoder", image_embeds=states).last_hidden_state
    return -_smoothed_ce(model.answer_head(hidden[0, :-1]), ids[0, 1:], eps)


def test_loss_equals_weighted_per_answer_cross_entropy_over_the_batch(tokenizer):
    model = _model()
    pixels = torch.randn(2, 3, 32, 32)
    q_ids, q_mask = tokenize_questions(tokenizer, QUESTIONS[:2])
    answers, n, weights = ["red", "a big circle", "yes"], torch.tensor([2, 1]), torch.tensor([0.7, 0.3, 1.0])
    a_ids, a_mask = tokenize_answers(tokenizer, answers)
    loss = model.loss(pixels, q_ids, q_mask, a_ids, a_mask, n, weights)

    # by hand: each answer on its own, given its question's states without padding
    image = model.encode_image(pixels)
    expected = 0.0
    for a, (answer, b) in enumerate(zip(answers, [0, 0, 1])):
        length = int(q_mask[b].sum())
        ids = q_ids[b : b + 1, :length].clone()
        ids[0, 0] = tokenizer.enc_token_id
        states = model.question_encoder(
            ids, torch.ones_like(ids), "multimodal", image_embeds=image[b : b + 1]
        )
        own = tokenizer(answer, return_tensors="pt").input_ids[0]
        expected = expected - weights[a] * _answer_log_likelihood(model, states.last_hidden_state, own)
    torch.testing.assert_close(loss, expected / 2)


def test_every_parameter_gets_a_gradient(tokenizer):
    model = _model().train()
    q_ids, q_mask = tokenize_questions(tokenizer, QUESTIONS[:2])
    a_ids, a_mask = tokenize_answers(tokenizer, ["red", "yes"])
    loss = model(torch.randn(2, 3, 32, 32), q_ids, q_mask, a_ids, a_mask, torch.tensor([1, 1]), torch.ones(2))
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(layer.self_attn is None for layer in model.answer_decoder.layers)
    assert all(layer.decoder_self_attn is None for layer in model.question_encoder.layers)


def test_repeated_question_states_equal_each_answer_run_with_its_own_question(tokenizer):
    model = _model()
    question = _questions(model, tokenizer, torch.randn(3, 3, 32, 32))
    a_ids, a_mask = tokenize_answers(tokenizer, ANSWERS[:5])
    index = torch.tensor([0, 0, 1, 2, 2])
    together = model.answer_losses(question, a_ids, a_mask, index)
    alone = [
        model.answer_losses(
            QuestionStates(question.states[b : b + 1], question.mask[b : b + 1]),
            a_ids[a : a + 1],
            a_mask[a : a + 1],
            torch.tensor([0]),
        )
        for a, b in enumerate(index.tolist())
    ]
    torch.testing.assert_close(together, torch.cat(alone))


def test_cached_greedy_answers_equal_recomputing_everything(tokenizer):
    model = _model()
    question = _questions(model, tokenizer, torch.randn(3, 3, 32, 32))
    fast = model.generate_answers(question, max_length=6, min_length=6, num_beams=1)
    ids = torch.full((3, 1), model.config.bos_token_id)
    kv = model.question_kv(question)
    while ids.shape[1] < 6:
        hidden = model.answer_decoder(
            ids, torch.ones_like(ids), "decoder", image_kv=kv, image_mask=question.mask
        ).last_hidden_state
        logits = model.answer_head(hidden[:, -1])
        logits[:, model.config.sep_token_id] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, ids)


def test_attend_question_padding_decodes_with_an_all_ones_question_mask_as_lavis(tokenizer):
    """LAVIS's ``_generate_answers`` passes ``encoder_attention_mask=torch.ones(...)``: the answer
    decoder reads the padding of shorter questions. Written out: greedy, recomputed at every step."""
    from lightning_blip.models.shared.generation import decode_captions

    model = _model(std=0.5)
    pixels = torch.randn(3, 3, 32, 32)
    question = _questions(model, tokenizer, pixels)
    assert not question.mask.all()  # the batch is padded
    ids = torch.full((3, 1), model.config.bos_token_id)
    for _ in range(5):
        hidden = model.answer_decoder(
            ids, torch.ones_like(ids), "decoder", image_embeds=question.states,
            image_mask=torch.ones_like(question.mask),
        ).last_hidden_state  # fmt: skip
        next_ids = model.answer_head(hidden[:, -1]).argmax(-1, keepdim=True)
        finished = (ids == model.config.sep_token_id).any(1, keepdim=True)
        ids = torch.cat([ids, next_ids.masked_fill(finished, model.config.pad_token_id)], 1)
    kw = {"max_length": 6, "num_beams": 1}
    lavis = model.answer(pixels, QUESTIONS, tokenizer, attend_question_padding=True, **kw)
    assert lavis == decode_captions(tokenizer, ids)
    assert model.answer(pixels, QUESTIONS, tokenizer, **kw) != lavis  # masking the padding changes answers


@pytest.mark.parametrize("k", [1, 2, len(ANSWERS)])
def test_ranking_takes_the_best_likelihood_among_the_first_token_top_k(tokenizer, k: int):
    model = _model()
    question = _questions(model, tokenizer, torch.randn(3, 3, 32, 32))
    c_ids, c_mask = tokenize_answers(tokenizer, ANSWERS)
    ranked = model.rank_answers(question, c_ids, c_mask, k=k)

    # naive: one question, one candidate at a time, without padding or caches
    differs_from_unrestricted = False
    for b in range(3):
        length = int(question.mask[b].sum())
        states = question.states[b : b + 1, :length]
        bos = torch.full((1, 1), model.config.bos_token_id)
        first = model.answer_decoder(bos, torch.ones_like(bos), "decoder", image_embeds=states)
        probs = model.answer_head(first.last_hidden_state[0, 0]).softmax(-1)
        own_ids = [tokenizer(a, return_tensors="pt").input_ids[0] for a in ANSWERS]
        shortlist = sorted(range(len(ANSWERS)), key=lambda c: -probs[own_ids[c][1]].item())[:k]
        scores = {c: _answer_log_likelihood(model, states, own_ids[c]).item() for c in range(len(ANSWERS))}
        assert ranked[b].item() == max(shortlist, key=scores.get)
        differs_from_unrestricted |= ranked[b].item() != max(scores, key=scores.get)
    if k == 2:  # with this seed the shortlist leaves out a question's best full likelihood
        assert differs_from_unrestricted
    if k == 1:  # the first token alone decides
        first_ids = c_ids[:, 1]
        bos = torch.full((3, 1), model.config.bos_token_id)
        logits = model.answer_head(
            model.answer_decoder(
                bos, torch.ones_like(bos), "decoder", image_embeds=question.states, image_mask=question.mask
            ).last_hidden_state[:, 0]
        )
        assert torch.equal(ranked, logits[:, first_ids].argmax(1))


def test_ranking_scores_carry_the_decoder_label_smoothing(tokenizer):
    """BLIP's ``rank_answer`` scores by its decoder loss, whose label smoothing 0.1 also charges
    ``0.1 * mean(-log p)`` per token. Head biases make the 4-token "a big circle" the most likely
    answer, but the 2-token "red" the best once smoothed: ranking must pick "red"."""
    model = _model()
    with torch.no_grad():
        for token, bias in {"a": 10.0, "big": 10.0, "circle": 10.0, "[SEP]": 10.0, "red": 4.5}.items():
            model.answer_head.decoder.bias[tokenizer.convert_tokens_to_ids(token)] += bias
    question = _questions(model, tokenizer, torch.randn(3, 3, 32, 32))
    c_ids, c_mask = tokenize_answers(tokenizer, ANSWERS)
    ranked = model.rank_answers(question, c_ids, c_mask, k=len(ANSWERS))
    own_ids = [tokenizer(a, return_tensors="pt").input_ids[0] for a in ANSWERS]
    for b in range(3):
        states = question.states[b : b + 1, : int(question.mask[b].sum())]
        smoothed = [_answer_log_likelihood(model, states, ids).item() for ids in own_ids]
        plain = [_answer_log_likelihood(model, states, ids, eps=0.0).item() for ids in own_ids]
        assert ANSWERS[ranked[b]] == ANSWERS[max(range(len(ANSWERS)), key=smoothed.__getitem__)] == "red"
        assert ANSWERS[max(range(len(ANSWERS)), key=plain.__getitem__)] == "a big circle"


@pytest.mark.parametrize(("mode", "num_beams"), [("generate", 1), ("generate", 3), ("rank", 1)])
def test_batched_answers_equal_one_by_one(tokenizer, mode: str, num_beams: int):
    model = _model(std=0.5)
    pixels = torch.randn(3, 3, 32, 32)
    kw = {"mode": mode, "answer_list": ANSWERS, "k": 4, "max_length": 6, "num_beams": num_beams}
    batched = model.answer(pixels, QUESTIONS, tokenizer, **kw)
    alone = [model.answer(pixels[i : i + 1], [q], tokenizer, **kw)[0] for i, q in enumerate(QUESTIONS)]
    assert batched == alone
    assert len(set(batched)) > 1  # the random model does not answer everything alike
    assert model.answer(pixels, QUESTIONS, **kw) == batched  # without a tokenizer: the bundled one


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_one_question_is_asked_of_every_image(tokenizer, mode: str):
    model = _model(std=0.5)
    pixels = torch.randn(4, 3, 32, 32)
    kw = {"mode": mode, "answer_list": ANSWERS, "k": 4, "max_length": 6}
    shared = model.answer(pixels, [QUESTIONS[1]], tokenizer, **kw)
    assert shared == model.answer(pixels, [QUESTIONS[1]] * 4, tokenizer, **kw)
    assert shared == [model.answer(pixels[i : i + 1], [QUESTIONS[1]], tokenizer, **kw)[0] for i in range(4)]
    assert len(set(shared)) > 1  # each image is answered, not the first one four times


def test_a_question_count_that_is_neither_one_nor_one_per_image_is_refused(tokenizer):
    with pytest.raises(ValueError, match="got 2 questions for 3 images"):
        _model().answer(torch.randn(3, 3, 32, 32), QUESTIONS[:2], tokenizer)


def test_init_from_a_pretrained_med_maps_encoder_and_decoder_weights():
    blip = BlipModel(_config(std=0.02, vision_width=64))  # ViT width = text width: every weight fits
    state = {f"model.blip.{k}": v for k, v in blip.state_dict().items()}
    state["model.text_m.embeddings.word_embeddings.weight"] = torch.zeros(1)  # a momentum copy
    model = BlipVQA(_config(vision_width=64, image_size=48))  # 480 px vs 384 px, in small
    report = model.load_pretrained(state)
    assert report.mismatched == []
    assert (
        "text_m.embeddings.word_embeddings.weight" in report.ignored and "itm_head.weight" in report.ignored
    )
    b, q, a = blip.text.layers[1], model.question_encoder.layers[1], model.answer_decoder.layers[1]
    assert torch.equal(q.self_attn.attention.query.weight, b.self_attn.attention.query.weight)
    assert torch.equal(a.decoder_self_attn.attention.query.weight, b.decoder_self_attn.attention.query.weight)
    for layer in (q, a):
        assert torch.equal(layer.cross_attn.attention.kv.key.weight, b.cross_attn.attention.kv.key.weight)
        assert torch.equal(layer.ffn.output.weight, b.ffn.output.weight)
    assert torch.equal(model.answer_head.dense.weight, blip.lm_head.dense.weight)
    assert model.answer_head.decoder.weight is model.answer_decoder.embeddings.word_embeddings.weight
    assert torch.equal(model.answer_head.decoder.weight, blip.text.embeddings.word_embeddings.weight)
    # 32 px -> 48 px: position embeddings interpolated (4x4 -> 6x6 patches, plus [CLS])
    assert model.visual_encoder.vit.pos_embed.shape[1] == 37
    assert torch.equal(
        model.visual_encoder.vit.blocks[0].mlp.fc1.weight, blip.visual_encoder.vit.blocks[0].mlp.fc1.weight
    )


def test_init_leaves_mismatched_answer_cross_attention_and_reloads_a_vqa_checkpoint(tokenizer):
    blip = BlipModel(_config())  # ViT width 48, text width 64
    model = _model()
    report = model.load_pretrained(blip.state_dict())
    expected = [
        f"answer_decoder.layers.{i}.cross_attn.attention.kv.{p}.weight"
        for i in (0, 1)
        for p in ("key", "value")
    ]
    assert report.mismatched == expected

    copy = _model(std=0.02)
    copy.load_pretrained({f"model.{k}": v for k, v in model.state_dict().items()})
    pixels = torch.randn(2, 3, 32, 32)
    assert copy.answer(pixels, QUESTIONS[:2], tokenizer, max_length=5) == model.answer(
        pixels, QUESTIONS[:2], tokenizer, max_length=5
    )


def test_label_smoothing_helper_matches_torch(tokenizer):
    logits, targets = torch.randn(5, 11), torch.randint(0, 11, (5,))
    torch.testing.assert_close(
        _smoothed_ce(logits, targets), F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="sum")
    )
