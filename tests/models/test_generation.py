"""Caption decoding: beam search against an exhaustive search and a naive reference, cache = no cache,
batched = one by one, min length, repetition penalty, reproducible nucleus sampling."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from conftest import tiny_text, tiny_vision

from lightning_blip.models.blip import BlipConfig, BlipModel
from lightning_blip.models.shared.generation import (
    _BeamSearch,
    _process,
    _TokenSearch,
    generate_ids,
    top_per_row,
)
from lightning_blip.models.shared.tokenizer import build_tokenizer

PAD, SEP, BOS = 0, 1, 2
INF = float("inf")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny passes: one thread is faster on 2 cores


def _model(vocab: int = 12, spread: float = 8.0, sep_bias: float = 2.0, seed: int = 0) -> BlipModel:
    """A tiny MED with a tiny vocabulary ([PAD] 0, [SEP] 1, [DEC] 2, [ENC] 3), in float64.

    Its weights are scaled up (``spread``) so that the image matters and the next-token
    distributions are far from uniform, with [SEP] (bias ``sep_bias``) often among the best.
    """
    torch.manual_seed(seed)
    text = tiny_text(vocab_size=vocab, dropout=0.0, attention_dropout=0.0)
    config = BlipConfig(
        vision=tiny_vision(), text=text, embed_dim=32, bos_token_id=BOS, enc_token_id=3, sep_token_id=SEP
    )
    model = BlipModel(config).double().eval()
    with torch.no_grad():
        if spread != 1.0:
            model.text.embeddings.word_embeddings.weight.mul_(3.0)
            for module in model.text.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_(spread)
            model.lm_head.decoder.bias.normal_(0.0, 1.0)
        model.lm_head.decoder.bias[SEP] += sep_bias
    return model


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Random image tokens ``(n, 17, 48)`` (the tiny ViT's shape), spread enough to matter."""
    return 3 * torch.randn(n, 17, 48, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@torch.no_grad()
def _log_probs(model, image_embeds, seq, repetition_penalty=1.0, min_length=0):
    """Processed next-token log-probabilities after ``seq`` (a list), recomputing everything."""
    ids = torch.tensor([seq])
    logits = model.lm_logits(ids, torch.ones_like(ids), image_embeds[None])[0, -1]
    scores = logits.log_softmax(-1).tolist()
    for token in set(seq):
        s = scores[token]
        scores[token] = s * repetition_penalty if s < 0 else s / repetition_penalty
    if len(seq) < min_length:
        scores[SEP] = -INF
    return scores


def _naive_beam_search(model, image_embeds, prompt, beams, max_length, min_length, length_penalty, rep):
    """transformers 4.15's beam search for one image, written out with lists and full recomputation.

    Finished hypotheses are all kept; "the best K" are the K highest, which is what transformers'
    bounded heap holds.
    """
    running = [(list(prompt), 0.0)]
    finished = []  # (normalised score, tokens before [SEP], ended)
    for length in range(len(prompt), max_length):
        candidates = []
        for seq, total in running:
            scores = _log_probs(model, image_embeds, seq, rep, min_length)
            candidates += [(total + s, seq, token) for token, s in enumerate(scores)]
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[: 2 * beams]
        running = []
        for rank, (total, seq, token) in enumerate(candidates):
            if token == SEP:
                if rank < beams and total > -INF:
                    finished.append((total / len(seq) ** length_penalty, seq, True))
            elif len(running) < beams:
                running.append((seq + [token], total))
        best_k = sorted(f[0] for f in finished)[-beams:]
        if len(finished) >= beams and best_k[0] >= candidates[0][0] / length**length_penalty:
            running = []
            break
    finished += [(total / len(seq) ** length_penalty, seq, False) for seq, total in running]
    _, seq, ended = max(finished, key=lambda f: f[0])
    return seq + [SEP] if ended else seq


def _rows(ids: torch.Tensor) -> list[list[int]]:
    """``(B, T)`` ids -> lists without the [PAD] tail."""
    out = []
    for row in ids.tolist():
        while row and row[-1] == PAD:
            row.pop()
        out.append(row)
    return out


def _naive_greedy(model, image_embeds, prompt, max_length, min_length, rep):
    """transformers' greedy search for one image: processed logits (not log-probabilities)."""
    seq = list(prompt)
    while len(seq) < max_length:
        ids = torch.tensor([seq])
        scores = model.lm_logits(ids, torch.ones_like(ids), image_embeds[None])[0, -1].tolist()
        for token in set(seq):
            scores[token] = scores[token] * rep if scores[token] < 0 else scores[token] / rep
        if len(seq) < min_length:
            scores[SEP] = -INF
        seq.append(max(range(len(scores)), key=scores.__getitem__))
        if seq[-1] == SEP:
            break
    return seq


# (beams, length penalty, repetition penalty, min length)
BEAM_SETTINGS = [(2, 1.0, 1.0, 1), (3, 0.5, 1.3, 3), (2, 2.0, 1.0, 5), (4, -1.0, 1.0, 1)]


@pytest.mark.parametrize(
    "vocab, num_images, max_length, settings",
    [
        (30, 12, 9, BEAM_SETTINGS),
        (64 * 40 + 5, 3, 7, BEAM_SETTINGS[:2]),  # wide enough for top_per_row's block search
    ],
)
def test_beam_search_equals_a_naive_reference(vocab, num_images, max_length, settings):
    model, images, prompt = _model(vocab=vocab), _images(num_images), [BOS, 5, 6]
    results = []
    for beams, length_penalty, rep, min_length in settings:
        ids = generate_ids(
            model,
            images,
            torch.tensor([prompt] * num_images),
            beams,
            max_length,
            min_length,
            length_penalty,
            rep,
        )
        expected = [
            _naive_beam_search(model, images[i], prompt, beams, max_length, min_length, length_penalty, rep)
            for i in range(num_images)
        ]
        assert _rows(ids) == expected, (beams, length_penalty, rep, min_length)
        results += expected
    if vocab == 30:  # both endings occur: [SEP] before max_length, and max_length reached
        assert any(row[-1] == SEP for row in results) and any(len(row) == max_length for row in results)


@pytest.mark.parametrize("width", [30524, 64 * 40, 64 * 40 + 7])
@pytest.mark.parametrize("n", [1, 6, 10])
def test_top_per_row_equals_topk(width, n):
    x = torch.randn(5, width, generator=torch.Generator().manual_seed(width + n))
    x[0, -1] = 50.0  # the best in the partial last block
    x[1, :: width // 3] = -INF  # suppressed tokens
    x[2, :100] += 5.0  # the best all in the first blocks
    values, columns = top_per_row(x, n)
    expected = x.topk(n, dim=1)
    assert torch.equal(values, expected.values) and torch.equal(columns, expected.indices)


def test_greedy_and_nucleus_of_one_token_equal_a_naive_greedy_reference():
    model = _model(vocab=30)
    images, prompt = _images(6), [BOS, 7]
    for rep, min_length in [(1.0, 3), (1.5, 5)]:
        expected = [_naive_greedy(model, images[i], prompt, 10, min_length, rep) for i in range(6)]
        kw = {"max_length": 10, "min_length": min_length, "repetition_penalty": rep}
        greedy = generate_ids(model, images, torch.tensor([prompt] * 6), **kw)
        nucleus = generate_ids(
            model,
            images,
            torch.tensor([prompt] * 6),
            do_sample=True,
            top_p=1e-9,
            generator=torch.Generator(),
            **kw,
        )
        assert _rows(greedy) == _rows(nucleus) == expected


def _beam_step(search: _BeamSearch, rows_scores: dict, ids: list, images: torch.Tensor):
    """One search step on hand-made log-probabilities {row: {token: value}} (others -20), vocabulary 12."""
    scores = torch.full((len(ids), 12), -20.0)
    for row, values in rows_scores.items():
        for token, value in values.items():
            scores[row, token] = value
    return search.step(scores, torch.tensor(ids), images)


def test_only_sep_among_the_best_num_beams_finishes_a_hypothesis():
    """Hand-made log-probabilities through three steps of one image with 2 beams (2K = 4 candidates)."""
    search = _BeamSearch(batch_size=1, eos=[SEP], num_beams=2, length_penalty=1.0)

    step = functools.partial(_beam_step, search)

    # [SEP] ranks 3rd: not a hypothesis; the two best words continue
    rows, tokens, images = step({0: {5: -0.1, 6: -0.2, SEP: -0.3, 7: -0.4}}, [[BOS, 4]], torch.tensor([0]))
    assert rows.tolist() == [0, 0] and tokens.tolist() == [5, 6] and search.hypotheses[0].items == []
    # totals: [SEP] after beam 1 -0.25 (rank 0), 7 after beam 0 -0.6, [SEP] after beam 0 -0.7 (rank 2),
    # 7 after beam 1 -1.2: one hypothesis, scored by its 3 tokens before [SEP]
    beams = [[BOS, 4, 5], [BOS, 4, 6]]
    rows, tokens, images = step({0: {7: -0.5, SEP: -0.6}, 1: {SEP: -0.05, 7: -1.0}}, beams, images)
    [(score, seq, ended)] = search.hypotheses[0].items
    assert seq.tolist() == [BOS, 4, 6] and ended and score == pytest.approx(-0.25 / 3)
    assert rows.tolist() == [0, 1] and tokens.tolist() == [7, 7] and images.tolist() == [0]
    # [SEP] after beam 0 (total -0.7, length 4) is the second hypothesis; the best running candidate
    # (-0.7 / 4) cannot beat the worst hypothesis (-0.175): done
    beams = [[BOS, 4, 5, 7], [BOS, 4, 6, 7]]
    rows, tokens, images = step({0: {SEP: -0.1, 8: -0.3}, 1: {SEP: -5.0, 8: -6.0}}, beams, images)
    assert [item[0] for item in search.hypotheses[0].items] == pytest.approx([-0.25 / 3, -0.7 / 4])
    assert images.tolist() == [] and rows.tolist() == []
    assert search.hypotheses[0].best(SEP).tolist() == [BOS, 4, 6, SEP]


def test_an_image_with_its_hypotheses_is_done_in_a_step_without_sep():
    """Once an image holds num_beams hypotheses, a step whose best candidates are all words still ends
    it when none of them can beat the worst hypothesis (the check the step's fast path must keep)."""
    search = _BeamSearch(batch_size=1, eos=[SEP], num_beams=2, length_penalty=1.0)

    step = functools.partial(_beam_step, search)

    # [SEP] first: hypothesis [DEC] 4 scored -0.1 / 2; words 5 and 6 continue
    rows, tokens, images = step({0: {SEP: -0.1, 5: -0.2, 6: -0.3}}, [[BOS, 4]], torch.tensor([0]))
    assert tokens.tolist() == [5, 6]
    # totals: 7 after beam 0 -0.25, [SEP] after beam 0 -0.3 (rank 1: a hypothesis, -0.1), 7 after
    # beam 1 -0.35; the best running (-0.25 / 3) beats the worst hypothesis (-0.1): not done
    beams = [[BOS, 4, 5], [BOS, 4, 6]]
    rows, tokens, images = step({0: {7: -0.05, SEP: -0.1}, 1: {7: -0.05}}, beams, images)
    assert len(search.hypotheses[0].items) == 2 and images.tolist() == [0] and tokens.tolist() == [7, 7]
    # no [SEP] among the best: the best running (-0.75 / 4) cannot beat -0.1 any more: done
    beams = [[BOS, 4, 5, 7], [BOS, 4, 6, 7]]
    rows, tokens, images = step({0: {8: -0.5}, 1: {8: -0.6}}, beams, images)
    assert images.tolist() == [] and rows.tolist() == []
    assert search.hypotheses[0].best(SEP).tolist() == [BOS, 4, SEP]


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_search_without_pruning_is_exhaustive_search(length_penalty):
    """With more beams than sequences, the result is the best-scoring of all sequences."""
    vocab, max_length, min_length = 6, 4, 2
    model = _model(vocab)
    image = _images(1)
    memo: dict[tuple, list[float]] = {}

    def log_probs(prefix: list[int]) -> list[float]:
        if tuple(prefix) not in memo:
            memo[tuple(prefix)] = _log_probs(model, image[0], prefix, min_length=min_length)
        return memo[tuple(prefix)]

    best, best_score = None, -INF
    for n in range(1, max_length):  # sequences [DEC] + n tokens; ended ones end with [SEP]
        for tokens in itertools.product(range(vocab), repeat=n):
            seq = [BOS, *tokens]
            if SEP in seq[:-1] or (seq[-1] != SEP and len(seq) < max_length):
                continue
            total = sum(log_probs(seq[:i])[seq[i]] for i in range(1, len(seq)))
            length = len(seq) - 1 if seq[-1] == SEP else len(seq)
            if total / length**length_penalty > best_score:
                best, best_score = seq, total / length**length_penalty
    ids = generate_ids(model, image, torch.tensor([[BOS]]), 150, max_length, min_length, length_penalty)
    assert _rows(ids) == [best]


SETTINGS = {
    "greedy": {},
    "beam": {"num_beams": 3, "repetition_penalty": 1.2},
    "sample": {"do_sample": True, "top_p": 0.8, "top_k": 5, "temperature": 0.7},
}


@pytest.mark.parametrize("mode", SETTINGS)
def test_cached_equals_recomputing_everything(mode):
    model = _model(vocab=30)
    images = _images(4)
    prompt = torch.tensor([[BOS, 7, 8]] * 4)
    kw = {**SETTINGS[mode], "max_length": 10, "min_length": 4}
    fast = generate_ids(model, images, prompt, generator=torch.Generator().manual_seed(1), **kw)
    slow = generate_ids(
        model, images, prompt, generator=torch.Generator().manual_seed(1), use_cache=False, **kw
    )
    assert torch.equal(fast, slow)
    assert (fast == SEP).any(dim=1).sum() >= 2  # rows ended at different steps


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_a_batch_decodes_as_its_images_one_by_one(mode):
    model = _model(vocab=30)
    images = _images(5)
    prompt = torch.tensor([[BOS, 7]] * 5)
    kw = {**SETTINGS[mode], "max_length": 12, "min_length": 3}
    batched = _rows(generate_ids(model, images, prompt, **kw))
    single = [_rows(generate_ids(model, images[i : i + 1], prompt[:1], **kw))[0] for i in range(5)]
    assert batched == single
    assert len({len(row) for row in batched}) > 1


def test_beams_share_the_image_keys_values(monkeypatch):
    """Each image's cross-attention keys/values are one row for all its beams, never copied."""
    model = _model(vocab=30)
    rows = []
    step = model.decode_step

    def spy(input_ids, attention_mask, cache):
        rows.append((input_ids.shape[0], cache[0].image_kv[0].shape[0]))
        return step(input_ids, attention_mask, cache)

    monkeypatch.setattr(model, "decode_step", spy)
    generate_ids(model, _images(3), torch.tensor([[BOS, 7]] * 3), num_beams=4, max_length=8)
    assert rows[0] == (3, 3) and rows[1] == (12, 3)
    assert all(r == 4 * images for r, images in rows[1:])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_length_holds_back_sep(num_beams):
    model = _model(vocab=30)
    with torch.no_grad():
        model.lm_head.decoder.bias[SEP] = 50.0  # [SEP] always wins when allowed
    images, prompt = _images(2), torch.tensor([[BOS, 7, 8]] * 2)
    assert _rows(generate_ids(model, images, prompt, num_beams, min_length=0))[0] == [BOS, 7, 8, SEP]
    for min_length in (4, 6):
        for row in _rows(generate_ids(model, images, prompt, num_beams, min_length=min_length)):
            assert len(row) == min_length + 1 and row[-1] == SEP and SEP not in row[:-1]


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    out = _process(scores.clone(), torch.tensor([[0, 1, 1]]), 2.0, min_length=0, eos=[3])
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, -3.0]]))
    out = _process(scores.clone(), torch.tensor([[0]]), 1.0, min_length=2, eos=[3])
    assert out[0, 3] == -INF and out[0, 0] == 2.0


def test_repetition_penalty_stops_a_repeating_greedy_caption():
    model = _model(vocab=30, spread=1.0, sep_bias=0.0)
    with torch.no_grad():
        model.lm_head.decoder.bias[9] = 5.0  # token 9 dominates every step
    images, prompt = _images(2), torch.tensor([[BOS, 7]] * 2)
    plain = _rows(generate_ids(model, images, prompt, max_length=8, min_length=8))
    penalised = _rows(generate_ids(model, images, prompt, max_length=8, min_length=8, repetition_penalty=1e3))
    assert all(row[2:] == [9] * 6 for row in plain)
    assert all(row[2:].count(9) == 1 and row[2] == 9 for row in penalised)


def test_sampling_is_reproducible_and_stays_in_the_nucleus():
    model = _model(vocab=30)
    images = _images(1).expand(12, -1, -1)
    prompt = torch.tensor([[BOS, 7]] * 12)
    kw = {"do_sample": True, "top_p": 0.6, "max_length": 7, "min_length": 3}

    def sample(seed: int) -> torch.Tensor:
        return generate_ids(model, images, prompt, generator=torch.Generator().manual_seed(seed), **kw)

    first = sample(0)
    assert torch.equal(first, sample(0)) and not torch.equal(first, sample(1))
    sizes = []
    for row in _rows(first):
        for t in range(2, len(row)):
            probs = torch.tensor(_log_probs(model, images[0], row[:t], min_length=3)).exp()
            ranked = probs.argsort(descending=True).tolist()
            above = probs[ranked[: ranked.index(row[t])]].sum()
            assert above <= 0.6  # the token is in the smallest set reaching top_p
            sizes.append(int((probs.sort(descending=True).values.cumsum(0) < 0.6).sum()) + 1)
    assert max(sizes) > 1  # the nucleus was not a single token


# hand-made distributions: the first token alone crosses 0.3, the second crosses 0.6, the third 0.9;
# then a row with ties among the kept and among the dropped tokens (no tie straddles a crossing)
NUCLEUS_ROWS = [[0.5, 0.3, 0.12, 0.05, 0.03], [0.35, 0.2, 0.2, 0.125, 0.125], [0.05, 0.03, 0.3, 0.5, 0.12]]


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_nucleus_keeps_what_transformers_top_p_keeps(monkeypatch, top_p):
    """The sampled distribution equals softmax of transformers' ``TopPLogitsWarper`` output: the token
    whose probability carries the running sum past ``top_p`` is kept, the ones after it are not."""
    from transformers import TopPLogitsWarper

    hand = torch.tensor(NUCLEUS_ROWS, dtype=torch.float64).log()
    noisy = 2 * torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = torch.cat([hand, noisy])
    seen = []

    def multinomial(probs, num_samples, generator=None):  # records the distribution it is asked to draw from
        seen.append(probs)
        return torch.zeros(len(probs), num_samples, dtype=torch.long)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    _TokenSearch(len(logits), [SEP], True, top_p, 0, 1.0, None)._sample(logits.clone())
    (probs,) = seen
    expected = TopPLogitsWarper(top_p)(None, logits.clone()).softmax(-1)
    torch.testing.assert_close(probs, expected)
    assert torch.equal(probs > 0, expected > 0)
    kept = {0.3: [1, 1, 1], 0.6: [2, 3, 2], 0.9: [3, 5, 3]}[top_p]  # by hand, for the rows above
    assert (probs[:3] > 0).sum(1).tolist() == kept


def test_generate_defaults_to_blip_beam_search_and_strips_the_prompt(blip_config):
    model = BlipModel(blip_config).eval()
    tokenizer = build_tokenizer()
    pixels = torch.randn(2, 3, 32, 32)
    captions = model.generate(pixels, tokenizer)
    image_embeds = model.forward_image(pixels)
    prompt = tokenizer(["a picture of "] * 2, return_tensors="pt").input_ids[:, :-1]
    ids = generate_ids(model, image_embeds, prompt, num_beams=3, max_length=20, min_length=5)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert captions == [t[len("a picture of") :].strip() for t in texts]
    assert (
        ids.shape[1] <= 20 and ids[:, 1:4].tolist() == prompt[:, 1:].tolist() and (ids[:, 0] == 30522).all()
    )
    sampled = model.generate(pixels, tokenizer, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 2 and all(isinstance(c, str) for c in sampled)
    assert model.generate(pixels) == captions  # without a tokenizer: the bundled vocabulary
