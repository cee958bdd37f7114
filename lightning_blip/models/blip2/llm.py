"""BLIP-2 stage 2: the Q-Former's queries as soft visual prompts of a frozen language model.

``frozen ViT -> ln_vision -> Q-Former queries -> llm_proj`` gives ``Q`` embeddings in the LLM's input
space, prepended to the text embeddings. Any transformers ``AutoModelForCausalLM`` (OPT, GPT-2,
Llama, ...) or ``AutoModelForSeq2SeqLM`` (T5, FlanT5, ...) loaded from a local directory or cache:

- decoder-only: ``[queries ; prompt + text + "\\n"]``, loss on the text tokens (and on BOS after an
  empty prompt, as LAVIS: ``score_bos``);
- encoder-decoder (prefix LM): encoder ``[queries ; prompt + prefix]``, decoder target the suffix.

The LLM is frozen (no gradients, always in eval mode; LAVIS leaves OPT's dropout on) and held in
``llm_dtype`` once moved to a GPU, as the frozen ViT is.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lightning_blip.losses.lm import IGNORE_INDEX
from lightning_blip.models.blip2.config import DTYPES, Blip2LLMConfig
from lightning_blip.models.blip2.model import FrozenAwareImageEncoder
from lightning_blip.models.blip2.opt_decoding import OPTDecoding, runs_opt
from lightning_blip.models.blip2.pretrained import BLIP2_LOADERS
from lightning_blip.models.blip2.qformer import QFormer
from lightning_blip.models.shared.generation import generate_llm_ids, one_per_image
from lightning_blip.models.shared.pretrained import FromPretrainedMixin
from lightning_blip.weights.checkpoint_io import load_state_dict_file

VQA_PROMPT = "Question: {} Short answer:"
# generation-config entries that change no rule of greedy or beam search as generate() calls them
# (it is given the stop and pad ids, the lengths, num_beams, do_sample and the length penalty)
_NEUTRAL_GENERATION_SETTINGS = {
    *("transformers_version", "_from_model_config", "bos_token_id", "eos_token_id", "pad_token_id"),
    *("use_cache", "output_attentions", "output_hidden_states", "output_scores", "output_logits"),
    *("return_dict_in_generate", "max_length", "max_new_tokens", "min_new_tokens", "num_beams"),
    *("num_return_sequences", "do_sample", "length_penalty", "temperature", "top_p", "top_k"),
}

# first "image_encoder." / "qformer." at a name boundary: what precedes it is a wrapper prefix
_STAGE1_NAME = re.compile(r"(?:^|\.)((?:image_encoder|qformer)\..*)$")


class TextBatch(NamedTuple):
    """Tokenised LLM text of one batch.

    Attributes:
        input_ids: ``(B, L)`` decoder-only: prompt + text; encoder-decoder: encoder text.
        attention_mask: ``(B, L)`` 1/0.
        labels: ``(B, T)`` targets, -100 where not scored: decoder-only ``T = L`` aligned with
            ``input_ids``; encoder-decoder the decoder targets.
        decoder_attention_mask: ``(B, T)`` encoder-decoder only.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    decoder_attention_mask: Tensor | None = None


class Stage1Report(NamedTuple):
    """What :meth:`Blip2ForGeneration.load_stage1` did: stage-2 names loaded, source keys ignored."""

    loaded: list[str]
    ignored: list[str]


def join_prompt(prompt: str, text: str) -> str:
    """``prompt`` and ``text`` joined by one space (none if either is empty or the prompt ends in one)."""
    if not prompt or not text or prompt[-1].isspace():
        return prompt + text
    return f"{prompt} {text}"


def context_labels(input_ids: Tensor, attention_mask: Tensor, context_lengths: Tensor | int) -> Tensor:
    """Targets ``(B, L)``: ``input_ids`` with padding and the first ``context_lengths`` tokens of each
    row (``(B,)`` or one int: BOS + prompt) set to -100. Right padding."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    context_lengths = torch.as_tensor(context_lengths, device=input_ids.device).reshape(-1, 1)
    return input_ids.masked_fill((attention_mask == 0) | (positions < context_lengths), IGNORE_INDEX)


def random_prefix_split(
    texts: list[str], generator: torch.Generator | None = None
) -> tuple[list[str], list[str]]:
    """Split each text at a uniformly random word boundary into (prefix, suffix), for the prefix LM.

    A text of ``n >= 2`` words is cut after word ``k`` with ``k`` uniform in ``1 .. n - 1``; a one-word
    text gives an empty prefix. Words are whitespace-separated and re-joined with single spaces.
    Draws ``len(texts)`` numbers from ``generator`` (default: the global torch RNG).
    """
    words = [text.split() for text in texts]
    draws = torch.rand(len(texts), generator=generator).tolist()
    prefixes, suffixes = [], []
    for row, u in zip(words, draws):
        cut = 1 + int(u * (len(row) - 1)) if len(row) > 1 else 0
        prefixes.append(" ".join(row[:cut]))
        suffixes.append(" ".join(row[cut:]))
    return prefixes, suffixes


class Blip2ForGeneration(FromPretrainedMixin, nn.Module):
    """BLIP-2 stage 2: frozen ViT, ``ln_vision``, Q-Former (queries only), ``llm_proj``, frozen LLM.

    Trainable: ``image_encoder.ln_vision``, ``qformer``, ``llm_proj`` (+ the ViT if not frozen). See
    :attr:`frozen_prefixes` and :meth:`trainable_state_dict` for checkpoints without frozen weights.
    """

    config_class = Blip2LLMConfig
    pretrained_loaders = BLIP2_LOADERS

    def __init__(self, config: Blip2LLMConfig | None = None) -> None:
        super().__init__()
        config = config or Blip2LLMConfig()
        self.image_encoder = FrozenAwareImageEncoder(
            config.vision, config.freeze_vision, config.frozen_vision_dtype, config.ln_vision_eps
        )
        qformer = replace(config.qformer, encoder_width=self.image_encoder.width, text=False)
        self.config = config = replace(config, qformer=qformer)
        self.qformer = QFormer(config.qformer)
        self.llm, self.tokenizer, self.is_encoder_decoder = _load_llm(config)
        llm_arguments = inspect.signature(self.llm.forward).parameters
        self._logits_to_keep = "logits_to_keep" in llm_arguments
        # transformers renamed the cache argument (and output field) past_key_values to cache in 5.x
        self._cache_name = "cache" if "cache" in llm_arguments else "past_key_values"
        self.llm_dtype = DTYPES[config.llm_dtype]
        self.llm.requires_grad_(False)
        self.llm.eval()
        embed_dim = self.llm.get_input_embeddings().weight.shape[1]
        self.llm_proj = nn.Linear(config.qformer.hidden_size, embed_dim)

        tok = self.tokenizer
        if tok.pad_token is None:  # e.g. GPT-2: padding is masked by the attention mask, never by id
            tok.pad_token = tok.eos_token
        # the special tokens the tokenizer puts before a text (OPT/Llama: BOS) start every LLM text
        probe = tok("a", return_special_tokens_mask=True)
        num_prefix = probe["special_tokens_mask"].index(0) if 0 in probe["special_tokens_mask"] else 0
        self._prefix_ids = probe["input_ids"][:num_prefix]
        self._prompt_length = num_prefix + len(tok(config.prompt, add_special_tokens=False).input_ids)
        self._eos_ids = self._stop_ids()

        if config.stage1_checkpoint:
            self.load_stage1(config.stage1_checkpoint)

    # frozen parts ---------------------------------------------------------------------------------
    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """Prefixes of the frozen parameter names (``state_dict`` keys): leave them out of checkpoints."""
        vision = ("image_encoder.visual_encoder.",) if self.config.freeze_vision else ()
        return (*vision, "llm.")

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """``state_dict`` without the frozen weights (they come back from ``config.llm`` / ``vision.weights``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay."""
        return {f"qformer.{n}" for n in self.qformer.no_weight_decay()}

    def train(self, mode: bool = True) -> Blip2ForGeneration:
        super().train(mode)
        self.llm.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        weight = self.llm.get_input_embeddings().weight
        if weight.device.type == "cuda" and weight.dtype == torch.float32 and self.llm_dtype != torch.float32:
            self.llm.to(self.llm_dtype)
        return self

    # stage-1 initialisation -----------------------------------------------------------------------
    def load_stage1(self, source: str | Path | dict[str, Tensor]) -> Stage1Report:
        """Initialise ``ln_vision`` and the Q-Former (queries, embedding LayerNorm, layers) from stage 1.

        ``source``: a weights file (safetensors, or a torch file such as a Lightning checkpoint) or a
        state dict with :class:`~lightning_blip.models.blip2.model.Blip2Model` keys; anything before the
        first ``image_encoder.`` / ``qformer.`` (``model.blip2.``) is stripped. Stage-1-only keys (text
        embeddings and FFN, ITC/ITM/ITG heads, ``temp``, the ViT) are ignored and reported.

        Raises:
            KeyError: a stage-2 weight is missing from ``source`` (named).
            ValueError: a shape differs (key and both shapes named), or two keys map to one name.
        """
        state = source if isinstance(source, dict) else load_state_dict_file(source)
        own = {
            **self.image_encoder.ln_vision.state_dict(prefix="image_encoder.ln_vision."),
            **self.qformer.state_dict(prefix="qformer."),
        }
        found: dict[str, Tensor] = {}
        ignored: list[str] = []
        for key, value in state.items():
            match = _STAGE1_NAME.search(key)
            name = match.group(1) if match else None
            if name not in own:
                ignored.append(key)
                continue
            if name in found:
                raise ValueError(f"stage-1 weights: two keys map to {name!r} (one is {key!r})")
            if value.shape != own[name].shape:
                raise ValueError(
                    f"stage-1 weights: {key!r} has shape {tuple(value.shape)}, "
                    f"the stage-2 model's {name!r} has {tuple(own[name].shape)}"
                )
            found[name] = value
        missing = [name for name in own if name not in found]
        if missing:
            raise KeyError(f"stage-1 weights lack {len(missing)} stage-2 keys, e.g. {missing[:5]}")
        self.load_state_dict(found, strict=False)
        return Stage1Report(sorted(found), ignored)

    # model ----------------------------------------------------------------------------------------
    def query_embeds(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> soft visual prompts ``(B, Q, D_llm)`` (fp32)."""
        image_embeds = self.image_encoder(pixel_values)
        return self.llm_proj(self.qformer(image_embeds=image_embeds).last_hidden_state)

    def _embed(self, input_ids: Tensor, query_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """``[queries ; token embeddings]`` ``(B, Q + L, D_llm)`` in the LLM's dtype and the queries' mask."""
        token_embeds = self.llm.get_input_embeddings()(input_ids)
        inputs = torch.cat([query_embeds.to(token_embeds.dtype), token_embeds], dim=1)
        return inputs, query_embeds.new_ones(query_embeds.shape[:2], dtype=torch.long)

    def forward(
        self,
        pixel_values: Tensor,
        text: list[str],
        text_output: list[str] | None = None,
        generator: torch.Generator | None = None,
        reduction: Literal["mean", "sum"] = "mean",
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Language-modelling loss of the text given the image (no label smoothing, as LAVIS).

        Args:
            pixel_values: ``(B, 3, H, W)``.
            text: ``B`` captions (the scored text), or the inputs of (input, output) pairs.
            text_output: ``B`` outputs: the scored text follows ``prompt + text``. Without it an
                encoder-decoder LLM scores a random suffix of ``text`` (:func:`random_prefix_split`).
            generator: RNG of the prefix split (default: the global torch RNG).
            reduction: ``mean``: the cross entropy summed over scored tokens divided by their number;
                ``sum``: ``(sum, count)`` to normalise by a count gathered over ranks.
        """
        batch = self.text_batch(text, text_output, generator)
        batch = TextBatch(*(None if t is None else t.to(pixel_values.device) for t in batch))
        queries = self.query_embeds(pixel_values)
        inputs, query_mask = self._embed(batch.input_ids, queries)
        attention_mask = torch.cat([query_mask, batch.attention_mask], dim=1)
        if self.is_encoder_decoder:
            logits = self.llm(
                inputs_embeds=inputs,
                attention_mask=attention_mask,
                decoder_input_ids=self._shift_right(batch.labels),
                decoder_attention_mask=batch.decoder_attention_mask,
                use_cache=False,
            ).logits
        else:
            # logits at position t score token t + 1: the text tokens are scored from Q - 1 .. Q + L - 2
            length = batch.input_ids.shape[1]
            keep = {"logits_to_keep": length + 1} if self._logits_to_keep else {}  # skip the queries' logits
            logits = self.llm(
                inputs_embeds=inputs, attention_mask=attention_mask, use_cache=False, **keep
            ).logits
            logits = logits[:, -(length + 1) : -1]
        scored = batch.labels != IGNORE_INDEX
        total = F.cross_entropy(logits[scored].float(), batch.labels[scored], reduction="sum")
        count = scored.sum()
        if reduction == "sum":
            return total, count
        return total / count.clamp(min=1)

    def text_batch(
        self, text: list[str], text_output: list[str] | None = None, generator: torch.Generator | None = None
    ) -> TextBatch:
        """Tokenise the LLM text of a batch and build its labels (CPU tensors); see :meth:`forward`."""
        tok, prompt = self.tokenizer, self.config.prompt
        pad = {"padding": "longest", "padding_side": "right", "return_tensors": "pt"}
        pad.update(truncation=True, max_length=self.config.max_text_length)
        if self.is_encoder_decoder:
            if text_output is None:
                text, text_output = random_prefix_split(text, generator)
            encoder = tok([join_prompt(prompt, t) for t in text], **pad)
            decoder = tok(list(text_output), **pad)
            labels = decoder.input_ids.masked_fill(decoder.attention_mask == 0, IGNORE_INDEX)
            return TextBatch(encoder.input_ids, encoder.attention_mask, labels, decoder.attention_mask)
        # the context (BOS + prompt [+ text]) is assumed to tokenise to a prefix of the full text's tokens
        if text_output is None:
            full = [join_prompt(prompt, t) + "\n" for t in text]
            context_lengths: Tensor | int = 0 if self.config.score_bos and not prompt else self._prompt_length
        else:
            contexts = [join_prompt(prompt, t) for t in text]
            full = [join_prompt(c, t) + "\n" for c, t in zip(contexts, text_output)]
            ids = tok(contexts, add_special_tokens=False).input_ids
            context_lengths = torch.tensor([len(self._prefix_ids) + len(i) for i in ids])
        tokens = tok(full, **pad)
        labels = context_labels(tokens.input_ids, tokens.attention_mask, context_lengths)
        return TextBatch(tokens.input_ids, tokens.attention_mask, labels)

    def _shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs ``(B, T)``: the decoder start token then the targets, -100 read as padding."""
        start = self.llm.generation_config.decoder_start_token_id
        if start is None:
            raise ValueError(
                f"llm={self.config.llm!r} has no decoder_start_token_id in its generation config"
            )
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1].masked_fill(
            labels[:, :-1] == IGNORE_INDEX, self.tokenizer.pad_token_id
        )
        return shifted

    # generation -----------------------------------------------------------------------------------
    def _stop_ids(self) -> list[int]:
        """Decoder-only LLMs: the newline token when it is a single token (plus the LLM's EOS ids if
        ``config.stop_at_eos``); otherwise the LLM's EOS ids."""
        eos = self.llm.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.is_encoder_decoder:
            # "a\n" rather than "\n": sentencepiece tokenises a lone newline with a leading "▁"
            without = self.tokenizer("a", add_special_tokens=False).input_ids
            with_newline = self.tokenizer("a\n", add_special_tokens=False).input_ids
            if len(with_newline) == len(without) + 1 and with_newline[: len(without)] == without:
                return [*(ids if self.config.stop_at_eos else []), with_newline[-1]]
        return ids

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        prompt: str | list[str] | None = None,
        num_beams: int = 5,
        max_new_tokens: int = 30,
        min_new_tokens: int = 1,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        do_sample: bool = False,
        top_p: float = 0.9,
        temperature: float = 1.0,
        num_return_sequences: int = 1,
    ) -> list[str]:
        """Text for each image ``(B, 3, H, W)`` -> ``B * num_return_sequences`` strings (grouped by image).

        ``prompt``: one for all images, one per image, or None for ``config.prompt``. The LLM's
        inputs are :meth:`generation_inputs`; decoder-only LLMs stop at a newline. With several beams
        (or sampled sequences) per image, a decoder-only LLM reads ``[queries ; prompt]`` once per
        image and its cache is copied to the beams, where transformers' ``generate`` alone would run
        the whole prefix once per beam.
        """
        inputs, attention_mask = self.generation_inputs(pixel_values, prompt)
        if self._decodes_itself(num_beams, do_sample, repetition_penalty, num_return_sequences):
            sequences = generate_llm_ids(
                OPTDecoding(self.llm, inputs, attention_mask, max_new_tokens),
                inputs.shape[0],
                self._eos_ids,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                length_penalty=length_penalty,
                num_return_sequences=num_return_sequences,
                pad_token_id=self.tokenizer.pad_token_id,
                device=inputs.device,
            )
            return self._texts(sequences)
        options = {
            "num_beams": num_beams,
            "do_sample": do_sample,
            "num_return_sequences": num_return_sequences,
        }
        if num_beams > 1:
            options["length_penalty"] = length_penalty
        if do_sample:
            options.update(top_p=top_p, temperature=temperature)
        if repetition_penalty != 1.0:
            options["repetition_penalty"] = repetition_penalty
        expansion = num_beams if num_beams > 1 else num_return_sequences  # rows per image in generate()
        if not self.is_encoder_decoder and expansion > 1:
            # [queries; prompt] but its last position once per image, not once per beam: the cache is
            # then copied to every beam, and generate() runs the last position only
            options[self._cache_name] = self._prefix_cache(inputs[:, :-1], attention_mask[:, :-1], expansion)
        sequences = self.llm.generate(
            inputs_embeds=inputs,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=self._eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **options,
        )
        return self._texts(sequences)

    def _texts(self, sequences: Tensor) -> list[str]:
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        if not self.is_encoder_decoder:
            texts = [t.split("\n", 1)[0] for t in texts]
        return [t.strip() for t in texts]

    def _decodes_itself(
        self, num_beams: int, do_sample: bool, repetition_penalty: float, num_return_sequences: int
    ) -> bool:
        """Greedy or beam search with an OPT LLM runs our decoding loop (:class:`OPTDecoding`), with
        the same result as the LLM's ``generate``, unless an option or the LLM's generation config
        asks for something that loop does not do (sampling, penalties, constraints)."""
        if do_sample or repetition_penalty != 1.0 or num_return_sequences > num_beams or self.llm.training:
            return False  # (training mode: our loop has no dropout)
        defaults = vars(_default_generation_config())
        own_settings = [
            key
            for key, value in vars(self.llm.generation_config).items()
            if key not in _NEUTRAL_GENERATION_SETTINGS
            and not key.startswith("_")
            and defaults.get(key) != value
        ]
        return not own_settings and runs_opt(self.llm)

    def generation_inputs(
        self, pixel_values: Tensor, prompt: str | list[str] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The LLM's input embeddings ``(B, S, D_llm)`` and attention mask ``(B, S)`` for generation.

        Decoder-only LLMs get ``[pads ; queries ; BOS + prompt]`` (left padding, so a batch generates
        as its rows would alone); encoder-decoder LLMs get ``[queries ; prompt + EOS]`` with right
        padding. ``prompt``: one for all images, one per image, or None for ``config.prompt``.
        """
        B = pixel_values.shape[0]
        prompt = self.config.prompt if prompt is None else prompt
        prompts = one_per_image(prompt, B, "prompts")
        queries = self.query_embeds(pixel_values)
        tok, device = self.tokenizer, pixel_values.device
        if self.is_encoder_decoder:
            tokens = tok(prompts, padding="longest", padding_side="right", return_tensors="pt").to(device)
            inputs, query_mask = self._embed(tokens.input_ids, queries)
            return inputs, torch.cat([query_mask, tokens.attention_mask], dim=1)
        tokens = tok(prompts, add_special_tokens=False, padding="longest", return_tensors="pt").to(device)
        prefix = torch.tensor(self._prefix_ids, dtype=torch.long, device=device).expand(B, -1)
        inputs, query_mask = self._embed(torch.cat([prefix, tokens.input_ids], dim=1), queries)
        attention_mask = torch.cat([query_mask, torch.ones_like(prefix), tokens.attention_mask], dim=1)
        # move every pad to the front, keeping the order of the rest (a stable sort of the 0/1 mask)
        order = torch.argsort(attention_mask, dim=1, stable=True)
        inputs = inputs.gather(1, order.unsqueeze(-1).expand_as(inputs))
        return inputs, attention_mask.gather(1, order)

    def _prefix_cache(self, inputs: Tensor, attention_mask: Tensor, repeats: int):
        """The decoder-only LLM's cache of ``inputs`` ``(B, S, D_llm)``, each row repeated ``repeats``
        times (as generate() orders beams and returned sequences)."""
        extra = {}
        if "position_ids" in inspect.signature(self.llm.forward).parameters:
            # as generate() numbers left-padded rows: from the first real token
            extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        out = self.llm(inputs_embeds=inputs, attention_mask=attention_mask, use_cache=True, **extra)
        cache = getattr(out, self._cache_name)
        cache.batch_repeat_interleave(repeats)
        return cache

    @torch.no_grad()
    def answer(
        self,
        pixel_values: Tensor,
        questions: list[str],
        prompt: str = VQA_PROMPT,
        num_beams: int = 5,
        max_new_tokens: int = 10,
        min_new_tokens: int = 1,
        length_penalty: float = -1.0,
    ) -> list[str]:
        """Zero-shot VQA: one answer per (image, question), with ``prompt.format(question)``.

        ``questions``: one per image, or one asked of every image. Defaults are the paper's (beam 5, at
        most 10 tokens, length penalty -1 as for FlanT5; LAVIS's OPT code uses 0).
        """
        questions = one_per_image(questions, pixel_values.shape[0], "questions")
        return self.generate(
            pixel_values,
            [prompt.format(q) for q in questions],
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            length_penalty=length_penalty,
        )


@functools.cache
def _default_generation_config() -> GenerationConfig:
    return GenerationConfig()


def _load_llm(config: Blip2LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """The LLM (fp32), its tokenizer and whether it is an encoder-decoder, never from the network."""
    try:
        llm_config = AutoConfig.from_pretrained(config.llm, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(config.llm, local_files_only=True)
    except OSError as err:
        raise FileNotFoundError(
            f"llm={config.llm!r}: no such local directory or cached model (models are loaded with "
            f"local_files_only=True and never downloaded): {err}"
        ) from err
    blip2 = llm_config.model_type == "blip-2"  # a transformers BLIP-2 directory: its language_model
    if blip2:
        llm_config = llm_config.text_config
    if config.llm_dense_act_fn is not None:
        if not hasattr(llm_config, "dense_act_fn"):
            raise ValueError(
                f"llm_dense_act_fn={config.llm_dense_act_fn!r}: llm={config.llm!r} is a "
                f"{llm_config.model_type!r} model, whose config has no dense_act_fn (T5 models have)"
            )
        # T5's is_gated_act and feed_forward_proj stay: LAVIS sets dense_act_fn alone on FlanT5's config
        llm_config.dense_act_fn = config.llm_dense_act_fn
    seq2seq = llm_config.is_encoder_decoder if config.llm_kind == "auto" else config.llm_kind == "seq2seq"
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    dtype = {"dtype": torch.float32}  # transformers 5 would otherwise load in the checkpoint's dtype
    if not blip2:
        return (
            auto.from_pretrained(config.llm, config=llm_config, local_files_only=True, **dtype),
            tokenizer,
            seq2seq,
        )
    return _blip2_language_model(config.llm, auto.from_config(llm_config, **dtype)), tokenizer, seq2seq


def _blip2_language_model(directory: str, llm: PreTrainedModel) -> PreTrainedModel:
    """Fill ``llm`` with the ``language_model.*`` weights of a transformers BLIP-2 directory.

    Raises:
        KeyError: a weight of the LLM is missing (tied copies aside) or one is unexpected (named).
    """
    from lightning_blip.weights.transformers_blip import read_transformers_state_dict

    prefix = "language_model."
    state = {
        k[len(prefix) :]: v
        for k, v in read_transformers_state_dict(directory, lambda k: k.startswith(prefix)).items()
    }
    missing, unexpected = llm.load_state_dict(state, strict=False)
    llm.tie_weights()
    params = dict(llm.named_parameters(remove_duplicate=False))
    loaded = {id(p) for name, p in params.items() if name in state}
    missing = [k for k in missing if k not in params or id(params[k]) not in loaded]  # tied copies are loaded
    if missing or unexpected:
        raise KeyError(f"{directory}: language_model weights missing {missing}, unexpected {unexpected}")
    return llm
