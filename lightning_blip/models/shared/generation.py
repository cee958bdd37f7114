"""Caption decoding: greedy, beam search and nucleus sampling in one loop, on the KV cache.

The image's cross-attention keys/values are computed once per image and shared by its beams: they
are neither copied per beam nor re-indexed per step (only when an image finishes and leaves the
batch). The self-attention cache is re-indexed by beam. ``use_cache=False`` recomputes everything
each step instead (the whole prefix, and the image keys/values of every row), for comparison.

Semantics are those of transformers 4.15's ``generate``, which BLIP's captioner called:

- ``max_length`` and ``min_length`` count every token, prompt included ([DEC] a picture of = 4);
  [SEP] is suppressed while the sequence is shorter than ``min_length``.
- Greedy and sampling process the logits; beam search processes log-probabilities (log-softmax),
  as transformers does. ``repetition_penalty`` divides the positive and multiplies the negative
  scores of every token already in the sequence (prompt included).
- Beam search keeps the ``2 * num_beams`` best continuations of each image; those ending in [SEP]
  among the first ``num_beams`` become finished hypotheses scored ``sum_logprobs / length **
  length_penalty``, with ``length`` the tokens before [SEP] (prompt included); the others continue.
  An image is done once it has ``num_beams`` hypotheses and none of its running beams could beat
  the worst of them (``best running sum / current length ** length_penalty``, transformers'
  ``early_stopping=False``); at ``max_length`` the running beams join the hypotheses.
  Later transformers (5.x, checked) count ``length`` as the generated tokens only, [SEP] included:
  with the default length penalty 1.0 the two can rank hypotheses differently.
- Sampling: temperature, then top-k, then top-p (the smallest set of most likely tokens whose
  probability reaches ``top_p``), then one draw from ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from lightning_blip.layers.attention import LayerCache


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    image_embeds: Any,
    prompt_ids: Tensor,
    num_beams: int = 1,
    max_length: int = 20,
    min_length: int = 5,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    top_p: float = 1.0,
    top_k: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Decode captions of ``B`` images (semantics in the module docstring).

    Args:
        model: the MED model (in eval mode for deterministic results), or any model with
            ``config`` (token ids), ``start_decoding(memory)`` and ``decode_step`` (as BlipVQA).
        image_embeds: ``(B, 1 + N, Dv)`` image tokens, or the memory ``model.start_decoding`` takes.
        prompt_ids: ``(B, P)`` prompt ids; the first is replaced by [DEC]; no trailing [SEP].
        num_beams: beams per image (1: greedy, or sampling with ``do_sample``).
        max_length: most tokens of a result, prompt included.
        min_length: [SEP] is suppressed until a sequence has this many tokens, prompt included.
        length_penalty: exponent of the length that divides a beam hypothesis's log-probability.
        repetition_penalty: > 1 discourages tokens already in the sequence.
        do_sample: sample (``num_beams`` must be 1) instead of taking the most likely token.
        top_p: nucleus size for sampling (1.0: off).
        top_k: sample among the ``top_k`` most likely tokens only (0: off).
        temperature: divides the logits before sampling.
        generator: random generator of the draws (reproducible sampling).
        use_cache: decode on the KV cache; False recomputes every position each step.

    Returns:
        ``(B, T)`` ids, prompt included, each ending with [SEP] unless it reached ``max_length``;
        [PAD] after the end.
    """
    cfg = model.config
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if do_sample and num_beams > 1:
        raise ValueError("sampling draws one token per row: use num_beams=1 with do_sample")
    ids = prompt_ids.clone()
    ids[:, 0] = cfg.bos_token_id
    B, eos = ids.shape[0], [cfg.sep_token_id]
    if num_beams > 1:
        search: _Search = _BeamSearch(B, eos, num_beams, length_penalty)
    else:
        search = _TokenSearch(B, eos, do_sample, top_p, top_k, temperature, generator)
    decoder = _Decoder(model, image_embeds, B, use_cache)
    ids, images = _decode(decoder, search, ids, max_length, min_length, repetition_penalty, num_beams > 1)
    return search.result(ids, images, cfg.pad_token_id)


@torch.no_grad()
def generate_llm_ids(
    decoder: Any,
    batch_size: int,
    eos_ids: list[int],
    num_beams: int = 1,
    max_new_tokens: int = 30,
    min_new_tokens: int = 1,
    length_penalty: float = 1.0,
    num_return_sequences: int = 1,
    pad_token_id: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Greedy or beam-search decoding of a decoder-only LLM with transformers 5's rules.

    These are the rules of the LLM's own ``generate`` (which BLIP-2 calls with the query and prompt
    embeddings): at most ``max_new_tokens``, any of ``eos_ids`` stops a sequence and is suppressed
    before ``min_new_tokens``; beam search as :class:`_LLMBeamSearch`.

    Args:
        decoder: ``step(ids)`` -> next-token logits ``(R, V)`` (the first call reads the prefix, one
            row per image) and ``keep(rows, images)``, as :class:`~lightning_blip.models.blip2.opt_decoding.OPTDecoding`.
        batch_size: images ``B``.
        num_return_sequences: the best hypotheses returned per image (at most ``num_beams``).

    Returns:
        ``(B * num_return_sequences, T)`` new tokens, grouped by image, a stop id ending each sequence
        that stopped; ``pad_token_id`` after the end.
    """
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) > num_beams ({num_beams})")
    ids = torch.full((batch_size, 1), pad_token_id, dtype=torch.long, device=device)  # a stand-in prefix
    max_length, min_length = 1 + max_new_tokens, 1 + min_new_tokens
    if num_beams > 1:
        search: _Search = _LLMBeamSearch(
            batch_size, eos_ids, num_beams, length_penalty, num_return_sequences, 1, max_length
        )
    else:
        search = _TokenSearch(batch_size, eos_ids, False, 1.0, 0, 1.0, None)
    ids, images = _decode(decoder, search, ids, max_length, min_length, 1.0, num_beams > 1)
    return search.result(ids, images, pad_token_id)[:, 1:]


def _decode(
    decoder: Any,
    search: _Search,
    ids: Tensor,
    max_length: int,
    min_length: int,
    repetition_penalty: float,
    log_probs: bool,
) -> tuple[Tensor, Tensor]:
    """The decoding loop: ``decoder`` gives logits, ``search`` picks the rows and tokens that go on.

    ``decoder.step`` returns a new logits tensor on each call, which the loop may overwrite.
    Returns the sequences still running when it stops (at ``max_length``) and their images.
    """
    images = torch.arange(ids.shape[0], device=ids.device)  # the image of each group of rows
    while ids.shape[1] < max_length and ids.shape[0] > 0:
        scores = decoder.step(ids)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # fp32 or fp64
        if log_probs:  # in place: a (rows, vocabulary) array fewer to allocate and read each step
            torch.log_softmax(scores, dim=-1, out=scores)
        scores = _process(scores, ids, repetition_penalty, min_length, search.eos)
        rows, tokens, images = search.step(scores, ids, images)
        ids = torch.cat([ids if rows is None else ids[rows], tokens[:, None]], dim=1)
        del scores  # freed before the next step's: one such array at a time stays in the CPU's cache
        if rows is not None:
            decoder.keep(rows, images)
    return ids, images


def greedy_decode(
    model: nn.Module, image_embeds: Any, prompt_ids: Tensor, max_length: int = 20, min_length: int = 5
) -> Tensor:
    """Greedy decoding on the KV cache: :func:`generate_ids` with one beam; ``(B, T)`` ids."""
    return generate_ids(model, image_embeds, prompt_ids, max_length=max_length, min_length=min_length)


def decode_captions(tokenizer, ids: Tensor, prompt: str = "") -> list[str]:
    """Token ids ``(B, T)`` -> strings with special tokens and the prompt removed."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    prompt = prompt.strip()
    return [t[len(prompt) :].strip() if prompt and t.startswith(prompt) else t.strip() for t in texts]


def _process(
    scores: Tensor, ids: Tensor, repetition_penalty: float, min_length: int, eos: list[int]
) -> Tensor:
    """Repetition penalty on the tokens of ``ids`` ``(R, T)`` and stop-id suppression: ``(R, V)``."""
    if repetition_penalty != 1.0:
        seen = scores.gather(1, ids)
        penalised = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        scores = scores.scatter(1, ids, penalised)
    if ids.shape[1] < min_length:
        scores[:, eos] = float("-inf")
    return scores


class _Decoder:
    """Next-token logits of the running rows, on the KV cache or recomputing everything each step.

    Rows come in equal groups, one per image still decoding (``R = G * k``); the image memory
    (cross-attention keys/values, or the embeddings when recomputing) has one row per group.
    """

    def __init__(self, model: nn.Module, memory: Any, batch_size: int, use_cache: bool) -> None:
        self.model, self.use_cache = model, use_cache
        if use_cache:
            self.cache: list[LayerCache] = model.start_decoding(memory)
        elif not isinstance(memory, Tensor) or not hasattr(model, "decoder_states"):
            raise ValueError("use_cache=False needs a model with decoder_states and image embeddings")
        self.memory = memory
        self.images = torch.arange(batch_size)
        self.started = False

    def step(self, ids: Tensor) -> Tensor:
        """Running sequences ``(R, T)`` -> next-token logits ``(R, V)``."""
        if not self.use_cache:
            embeds = self.memory.repeat_interleave(ids.shape[0] // self.memory.shape[0], dim=0)
            hidden = self.model.decoder_states(ids, torch.ones_like(ids), image_embeds=embeds)
            return self.model.lm_head(hidden[:, -1])
        new_ids = ids[:, -1:] if self.started else ids  # the whole prompt first
        logits, self.cache = self.model.decode_step(new_ids, None, self.cache)  # no padding
        self.started = True
        return logits

    def keep(self, rows: Tensor, images: Tensor) -> None:
        """Continue with rows ``rows`` of the last step, grouped under ``images`` (a subsequence)."""
        shrunk = images.shape[0] != self.images.shape[0]  # an image finished: drop its memory
        kept = torch.isin(self.images, images.cpu()).nonzero().squeeze(1) if shrunk else None
        self.images = images.cpu()
        if not self.use_cache:
            if kept is not None:
                self.memory = self.memory[kept.to(self.memory.device)]
            return
        rows_changed = not rows_unchanged(rows, self.cache[0].self_kv[0].shape[0])
        if rows_changed or kept is not None:
            self.cache = [self._index(c, rows if rows_changed else None, kept) for c in self.cache]

    @staticmethod
    def _index(cache: LayerCache, rows: Tensor | None, kept: Tensor | None) -> LayerCache:
        """Self-attention rows ``rows`` and image memory rows ``kept`` of one layer's cache."""
        fields = {}
        if rows is not None:
            fields["self_kv"] = (cache.self_kv[0][rows], cache.self_kv[1][rows])
        if kept is not None:
            kept = kept.to(cache.image_kv[0].device)
            fields["image_kv"] = (cache.image_kv[0][kept], cache.image_kv[1][kept])
            if getattr(cache, "image_mask", None) is not None:  # a padded memory (VQA questions)
                fields["image_mask"] = cache.image_mask[kept]
        return cache._replace(**fields)


def top_per_row(x: Tensor, n: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """The ``n`` largest values of each row of ``x`` ``(R, V)`` and their columns, ``(R, n)`` each.

    Equal to ``x.topk(n, dim=1)``, but reads a wide row (a vocabulary) once through block maxima:
    the ``n`` largest values lie in the ``n`` blocks of ``block`` columns with the largest maxima,
    so only those blocks and the last, partial one are searched.
    """
    R, V = x.shape
    full = V // block * block
    if full // block <= 4 * n:
        return x.topk(n, dim=1)
    blocks = x[:, :full].view(R, full // block, block)
    chosen = blocks.amax(dim=2).topk(n, dim=1).indices  # (R, n)
    candidates = blocks.gather(1, chosen[..., None].expand(R, n, block)).flatten(1)
    values, index = torch.cat([candidates, x[:, full:]], dim=1).topk(n, dim=1)
    in_blocks = index < n * block
    columns = chosen.gather(1, (index // block).clamp(max=n - 1)) * block + index % block
    return values, torch.where(in_blocks, columns, index - n * block + full)


def rows_unchanged(rows: Tensor, size: int) -> bool:
    """``rows`` selects all ``size`` rows of the last step in order: a cache needs no re-indexing."""
    return rows.shape[0] == size and bool((rows == torch.arange(size, device=rows.device)).all())


class _Search:
    """How the next tokens are chosen and where finished sequences go."""

    def __init__(self, batch_size: int, eos: list[int]) -> None:
        self.eos = eos  # the stop ids
        self.finished: list[Tensor | None] = [None] * batch_size
        self._eos_tensor: Tensor | None = None

    def is_stop(self, tokens: Tensor) -> Tensor:
        """Which of ``tokens`` are stop ids (a boolean tensor of the same shape)."""
        if self._eos_tensor is None:  # built once, on the device of the tokens
            self._eos_tensor = torch.tensor(self.eos, device=tokens.device)
        return torch.isin(tokens, self._eos_tensor)

    def step(self, scores: Tensor, ids: Tensor, images: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """Processed scores ``(R, V)`` of sequences ``ids`` ``(R, T)`` -> the rows that continue
        ``(R',)`` (None: all of them, in order), their next tokens ``(R',)`` and the images of their
        groups."""
        raise NotImplementedError

    def result(self, ids: Tensor, images: Tensor, pad: int) -> Tensor:
        """``(B, T)`` sequences padded with ``pad``, after the loop stopped with ``ids`` running."""
        raise NotImplementedError

    @staticmethod
    def _pad(sequences: list[Tensor], like: Tensor, pad: int) -> Tensor:
        if not sequences:
            return like[:0]
        return pad_sequence(sequences, batch_first=True, padding_value=pad)


class _TokenSearch(_Search):
    """One row per image: the most likely token (greedy) or a sampled one; a row ends at [SEP]."""

    def __init__(
        self,
        batch_size: int,
        eos: list[int],
        do_sample: bool,
        top_p: float,
        top_k: int,
        temperature: float,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__(batch_size, eos)
        self.do_sample, self.top_p, self.top_k = do_sample, top_p, top_k
        self.temperature, self.generator = temperature, generator

    def step(self, scores: Tensor, ids: Tensor, images: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        tokens = self._sample(scores) if self.do_sample else top_per_row(scores, 1)[1][:, 0]
        ended = self.is_stop(tokens)
        if not ended.any():
            return None, tokens, images
        for row in ended.nonzero().squeeze(1).tolist():
            self.finished[int(images[row])] = torch.cat([ids[row], tokens[row : row + 1]])
        rows = (~ended).nonzero().squeeze(1)
        return rows, tokens[rows], images[rows]

    def _sample(self, logits: Tensor) -> Tensor:
        """Temperature, top-k, top-p, then one draw per row: ``(R, V)`` -> ``(R,)``."""
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k > 0:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # drop a token once the tokens ranked above it already hold more than top_p
            drop = torch.zeros_like(cumulative, dtype=torch.bool)
            drop[:, 1:] = cumulative[:, :-1] > self.top_p
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def result(self, ids: Tensor, images: Tensor, pad: int) -> Tensor:
        for row, image in enumerate(images.tolist()):  # reached max_length
            self.finished[image] = ids[row]
        return self._pad(self.finished, ids, pad)


class _Hypotheses:
    """The best ``size`` finished sequences of one image, scored ``sum_logprobs / length ** penalty``."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size, self.length_penalty = size, length_penalty
        self.items: list[tuple[float, Tensor, bool]] = []  # (score, ids without [SEP], ended by [SEP])
        self.worst = 1e9

    def add(self, ids: Tensor, sum_logprobs: float, ended: bool) -> None:
        score = sum_logprobs / ids.shape[0] ** self.length_penalty
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, ids, ended))
            if len(self.items) > self.size:
                # the first-added of the lowest scores goes, as transformers' sort does
                del self.items[min(range(len(self.items)), key=lambda i: (self.items[i][0], i))]
                self.worst = min(s for s, _, _ in self.items)
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_running: float, length: int) -> bool:
        """No running beam (best log-probability sum ``best_running``) can improve the set."""
        return len(self.items) >= self.size and self.worst >= best_running / length**self.length_penalty

    def best(self, eos: int) -> Tensor:
        """The highest-scoring sequence (the last added among equals), with [SEP] if it ended so."""
        _, ids, ended = max(reversed(self.items), key=lambda item: item[0])
        return torch.cat([ids, ids.new_tensor([eos])]) if ended else ids


class _BeamSearch(_Search):
    """Beam search with ``num_beams`` beams per image, transformers 4.15's rules (module docstring)."""

    def __init__(self, batch_size: int, eos: list[int], num_beams: int, length_penalty: float) -> None:
        super().__init__(batch_size, eos)
        self.num_beams = num_beams
        self.candidates = 2 * num_beams  # continuations kept per image and step
        self.hypotheses = [_Hypotheses(num_beams, length_penalty) for _ in range(batch_size)]
        self.beam_scores: Tensor | None = None  # (R,) log-probability sums of the running rows

    def step(self, scores: Tensor, ids: Tensor, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        (R, V), G, C = scores.shape, images.shape[0], self.candidates
        k = R // G  # 1 at the first step (one prompt per image), then up to num_beams
        # the best C of each row, then the best C of each image's k * C: the best C of its k * V
        n = min(C, V)
        row_scores, row_tokens = top_per_row(scores, n)
        if self.beam_scores is not None:
            row_scores = row_scores + self.beam_scores[:, None]
        top_scores, top = row_scores.view(G, k * n).topk(min(C, k * n), dim=1)
        parents = top // n + torch.arange(G, device=top.device)[:, None] * k  # (G, C) rows
        tokens = row_tokens.view(G, k * n).gather(1, top)
        K = self.num_beams
        usual = top.shape[1] >= K and not self.may_stop(images, ids.shape[1] + 1)
        if usual and not self.is_stop(tokens[:, :K]).any():
            # no image can finish and none has a stop id among its best K: they are its running beams
            self.beam_scores = top_scores[:, :K].flatten()
            return parents[:, :K].flatten(), tokens[:, :K].flatten(), images
        parents, tokens, top_scores = parents.tolist(), tokens.tolist(), top_scores.tolist()
        rows, next_tokens, next_scores, kept = [], [], [], []
        for g, image in enumerate(images.tolist()):
            running = self._continue(image, ids, list(zip(parents[g], tokens[g], top_scores[g])))
            if running is None:  # the image is done
                continue
            kept.append(g)
            for parent, token, score in running:
                rows.append(parent)
                next_tokens.append(token)
                next_scores.append(score)
        # every image keeps the same number of beams (fewer than num_beams only with a tiny vocabulary)
        device = ids.device
        self.beam_scores = torch.tensor(next_scores, dtype=scores.dtype, device=device)
        return (
            torch.tensor(rows, dtype=torch.long, device=device),
            torch.tensor(next_tokens, dtype=torch.long, device=device),
            images[torch.tensor(kept, dtype=torch.long, device=device)],
        )

    def may_stop(self, images: Tensor, length: int) -> bool:
        """Whether one of ``images`` could be done after a step to ``length`` tokens without a stop id
        among its best ``num_beams`` candidates: it holds ``num_beams`` hypotheses already."""
        return any(len(self.hypotheses[image].items) >= self.num_beams for image in images.tolist())

    def _continue(
        self, image: int, ids: Tensor, candidates: list[tuple[int, int, float]]
    ) -> list[tuple[int, int, float]] | None:
        """Hypotheses from the best ``candidates`` (parent row, token, score) of ``image``, best
        first; returns the beams that continue, or None when the image is done."""
        hypotheses, running = self.hypotheses[image], []
        for rank, (parent, token, score) in enumerate(candidates):
            if token in self.eos:
                # only [SEP]s among the best num_beams count; a suppressed one never does
                if rank < self.num_beams and score != float("-inf"):
                    hypotheses.add(ids[parent], score, ended=True)
            else:
                running.append((parent, token, score))
                if len(running) == self.num_beams:
                    break
        return None if hypotheses.is_done(candidates[0][2], ids.shape[1]) else running

    def result(self, ids: Tensor, images: Tensor, pad: int) -> Tensor:
        if images.shape[0]:  # reached max_length: the running beams join the hypotheses
            k = ids.shape[0] // images.shape[0]
            scores = [0.0] * ids.shape[0] if self.beam_scores is None else self.beam_scores.tolist()
            for row in range(ids.shape[0]):
                self.hypotheses[int(images[row // k])].add(ids[row], scores[row], ended=False)
        return self._pad([h.best(self.eos[0]) for h in self.hypotheses], ids, pad)


class _LLMBeamSearch(_BeamSearch):
    """Beam search with transformers 5's rules (``early_stopping=False``), as an LLM's ``generate`` runs it.

    Unlike :class:`_BeamSearch`: each image keeps ``max(2, 1 + len(eos)) * num_beams`` candidates
    per step; a candidate ending in a stop id among the best ``num_beams`` becomes a hypothesis scored
    ``sum_logprobs / generated ** length_penalty``, ``generated`` counting the new tokens with the stop
    id; at ``max_length`` the best ``num_beams`` candidates become hypotheses whatever their last
    token; an image is done once it holds ``num_beams`` hypotheses and the best running beam's sum,
    divided by the same ``generated ** length_penalty``, does not beat the worst of them.
    """

    def __init__(
        self,
        batch_size: int,
        eos: list[int],
        num_beams: int,
        length_penalty: float,
        num_return_sequences: int,
        prompt_length: int,
        max_length: int,
    ) -> None:
        super().__init__(batch_size, eos, num_beams, length_penalty)
        self.candidates = max(2, 1 + len(eos)) * num_beams
        self.length_penalty, self.num_return_sequences = length_penalty, num_return_sequences
        self.prompt_length, self.max_length = prompt_length, max_length
        self.best: list[list[tuple[float, Tensor]]] = [[] for _ in range(batch_size)]  # best first

    def may_stop(self, images: Tensor, length: int) -> bool:
        """At ``max_length`` every image stops; before it, one holding ``num_beams`` hypotheses may."""
        return length >= self.max_length or any(
            len(self.best[image]) >= self.num_beams for image in images.tolist()
        )

    def _continue(
        self, image: int, ids: Tensor, candidates: list[tuple[int, int, float]]
    ) -> list[tuple[int, int, float]] | None:
        K, length = self.num_beams, ids.shape[1] + 1
        norm = (length - self.prompt_length) ** self.length_penalty
        last = length >= self.max_length
        best, running, added = self.best[image], [], False
        for rank, (parent, token, score) in enumerate(candidates):
            if last or token in self.eos:
                if rank < K and score != float("-inf"):
                    best.append((score / norm, torch.cat([ids[parent], ids.new_tensor([token])])))
                    added = True
            elif len(running) < K:
                running.append((parent, token, score))
        if added:
            best.sort(key=lambda item: -item[0])  # stable: the earlier hypothesis first among equals
            del best[K:]
        if last or not running or (len(best) >= K and running[0][2] / norm <= best[-1][0]):
            return None
        return running

    def result(self, ids: Tensor, images: Tensor, pad: int) -> Tensor:
        # nothing runs at the end: the step that reached max_length made hypotheses of every beam
        return self._pad(
            [seq for best in self.best for _, seq in best[: self.num_return_sequences]], ids, pad
        )


def one_per_image(texts: str | Sequence[str], num_images: int, what: str) -> list[str]:
    """``texts`` (prompts, questions) as one per image: a single text is given to every image.

    Raises:
        ValueError: neither one text nor one per image (``what`` and both counts named).
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) == 1:
        texts = texts * num_images
    if len(texts) != num_images:
        raise ValueError(
            f"got {len(texts)} {what} for {num_images} images: give one per image, or one for all"
        )
    return texts
