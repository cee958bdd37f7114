"""BLIP's VQA model: ViT, image-grounded question encoder, and an answer decoder reading the question.

The question (first token [ENC]) is encoded with cross-attention to the image; the answer decoder
(first token [DEC]) cross-attends to the question encoder's output states under the question's
padding mask. Both text transformers are initialised from a pretrained MED: the question encoder
from its encoder modes, the answer decoder from its decoder (:meth:`BlipVQA.load_pretrained`); in
fine-tuning they no longer share weights.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lightning_blip.layers.attention import KeyValue, LayerCache, index_kv
from lightning_blip.layers.heads import LMHead
from lightning_blip.losses.lm import lm_labels, scored_positions, sequence_lm_loss
from lightning_blip.models.blip.config import BlipConfig
from lightning_blip.models.blip.med import MEDTextModel
from lightning_blip.models.blip.pretrained import BLIP_LOADERS
from lightning_blip.models.shared.generation import decode_captions, generate_ids, one_per_image
from lightning_blip.models.shared.pretrained import FromPretrainedMixin
from lightning_blip.models.shared.tokenizer import default_tokenizer
from lightning_blip.models.shared.vision import VisionEncoder
from lightning_blip.weights.checkpoint_io import load_state_dict_file
from lightning_blip.weights.keymap import LoadReport

InferenceMode = Literal["generate", "rank"]

MAX_QUESTION_TOKENS = 35  # BLIP's question tokenisation (truncation at 35 tokens)


class QuestionStates(NamedTuple):
    """Question encoder output: ``states`` ``(B, Lq, D)`` and ``mask`` ``(B, Lq)`` (None: attend to all)."""

    states: Tensor
    mask: Tensor | None


def tokenize_questions(
    tokenizer: PreTrainedTokenizerBase, questions: list[str], max_length: int = MAX_QUESTION_TOKENS
) -> tuple[Tensor, Tensor]:
    """Questions -> ``[CLS] ... [SEP]`` ids and mask ``(B, Lq)``, padded to the longest, cut at
    ``max_length`` tokens."""
    out = tokenizer(questions, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return out["input_ids"].long(), out["attention_mask"].long()


def tokenize_answers(
    tokenizer: PreTrainedTokenizerBase, answers: list[str], max_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Answers -> ``[CLS] ... [SEP]`` ids and mask ``(A, La)`` padded to the longest (BLIP: no truncation)."""
    kw = {"truncation": True, "max_length": max_length} if max_length else {}
    out = tokenizer(answers, padding="longest", return_tensors="pt", **kw)
    return out["input_ids"].long(), out["attention_mask"].long()


_ENCODER_SELF_ATTN = re.compile(r"^layers\.\d+\.self_attn\.")
_DECODER_SELF_ATTN = re.compile(r"^layers\.\d+\.decoder_self_attn\.")


class BlipVQA(FromPretrainedMixin, nn.Module):
    """ViT + image-grounded question encoder + answer decoder (salesforce/BLIP ``BLIP_VQA``).

    No Lightning here. ``config.text`` describes both text transformers; the question encoder's
    cross-attention reads the ViT tokens, the answer decoder's reads the question states (width =
    text hidden size). ``config.embed_dim`` and ``config.temperature`` are unused.
    """

    config_class = BlipConfig
    pretrained_loaders = BLIP_LOADERS

    def __init__(self, config: BlipConfig | None = None) -> None:
        super().__init__()
        config = config or BlipConfig()
        self.visual_encoder = VisionEncoder(config.vision)
        text = replace(config.text, encoder_width=self.visual_encoder.width, cross_attention=True)
        self.config = replace(config, text=text)
        self.question_encoder = MEDTextModel(replace(text, decoder=False))
        self.answer_decoder = MEDTextModel(
            replace(text, encoder_width=text.hidden_size, encoder=False, decoder=True)
        )
        self.answer_head = LMHead(self.answer_decoder.embeddings.word_embeddings, text.layer_norm_eps)
        nn.init.normal_(self.answer_head.dense.weight, std=text.initializer_range)
        nn.init.zeros_(self.answer_head.dense.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay besides biases and norms."""
        names = {f"visual_encoder.{n}" for n in self.visual_encoder.no_weight_decay()}
        names |= {f"question_encoder.{n}" for n in self.question_encoder.no_weight_decay()}
        names |= {f"answer_decoder.{n}" for n in self.answer_decoder.no_weight_decay()}
        return names

    # encoders ------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> image tokens ``(B, 1 + N, Dv)``."""
        return self.visual_encoder(pixel_values)

    def encode_questions(
        self, image_embeds: Tensor, question_ids: Tensor, question_mask: Tensor
    ) -> QuestionStates:
        """Image-grounded question encoding: ids ``(B, Lq)`` ([CLS] first, replaced by [ENC]) -> states."""
        ids = question_ids.clone()
        ids[:, 0] = self.config.enc_token_id
        states = self.question_encoder(ids, question_mask, "multimodal", image_embeds=image_embeds)
        return QuestionStates(states.last_hidden_state, question_mask)

    def question_kv(self, question: QuestionStates) -> list[KeyValue]:
        """The answer decoder's cross-attention keys/values of the question states, one per layer.

        Computed once per question and indexed for each of its answers, candidates or beams.
        """
        return self.answer_decoder.image_kv(question.states)

    # training ------------------------------------------------------------------------------------
    def answer_losses(
        self,
        question: QuestionStates,
        answer_ids: Tensor,
        answer_mask: Tensor,
        question_index: Tensor,
        question_kv: list[KeyValue] | None = None,
        label_smoothing: float = 0.1,
    ) -> Tensor:
        """Label-smoothed cross entropy summed over each answer's tokens ([SEP] included) ``(A,)``.

        Args:
            question: states of B questions.
            answer_ids: ``(A, La)`` ``[CLS] ... [SEP]`` ids (the first is replaced by [DEC]), padded.
            answer_mask: ``(A, La)``.
            question_index: ``(A,)`` the question of each answer (row of ``question``).
            question_kv: :meth:`question_kv` of ``question`` if already computed.
            label_smoothing: BLIP's decoder uses 0.1.
        """
        kv = index_kv(question_kv or self.question_kv(question), question_index)
        mask = None if question.mask is None else question.mask[question_index]
        ids = answer_ids.clone()
        ids[:, 0] = self.config.bos_token_id
        hidden = self.answer_decoder(
            ids, answer_mask, "decoder", image_kv=kv, image_mask=mask
        ).last_hidden_state
        labels = lm_labels(ids, answer_mask)
        scored = scored_positions(labels)
        return sequence_lm_loss(self.answer_head(hidden[:, :-1][scored]), labels, label_smoothing, scored)

    def loss(
        self,
        pixel_values: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        answer_ids: Tensor,
        answer_mask: Tensor,
        n_answers: Tensor,
        weights: Tensor,
    ) -> Tensor:
        """BLIP's VQA loss: ``sum_a weight_a * CE_a / B`` over the A answers of the B questions.

        Args:
            pixel_values: ``(B, 3, H, W)``.
            question_ids, question_mask: ``(B, Lq)``.
            answer_ids, answer_mask: ``(A, La)``, the answers of question 0, then of question 1, ...
            n_answers: ``(B,)`` answers per question (sums to A).
            weights: ``(A,)`` each answer's weight (its share of the annotators; 0.2 for VG).

        Each question's states (their cross-attention keys/values) are computed once and repeated
        for its answers; CE_a is the label-smoothed (0.1) cross entropy summed over answer a's tokens.
        """
        question = self.encode_questions(self.encode_image(pixel_values), question_ids, question_mask)
        index = torch.arange(len(n_answers), device=n_answers.device).repeat_interleave(n_answers)
        losses = self.answer_losses(question, answer_ids, answer_mask, index)
        return (weights.to(losses.dtype) * losses).sum() / pixel_values.shape[0]

    def forward(self, *args: Tensor) -> Tensor:
        """Same as :meth:`loss` (the entry point that wrappers hook)."""
        return self.loss(*args)

    # decoding on the cache (the protocol of ``lightning_blip.models.shared.generation``) ----------------
    def start_decoding(self, question: QuestionStates) -> list[LayerCache]:
        """An empty decoding cache holding the question's cross-attention keys/values and mask."""
        return [LayerCache(None, kv, question.mask) for kv in self.question_kv(question)]

    def decode_step(
        self, input_ids: Tensor, attention_mask: Tensor | None, cache: list[LayerCache]
    ) -> tuple[Tensor, list[LayerCache]]:
        """One cached step: new ids ``(B, T)`` -> next-token logits ``(B, V)`` and the cache.

        ``attention_mask`` ``(B, S)`` covers the cached and the new tokens (None: no padding).
        """
        out = self.answer_decoder(input_ids, attention_mask, "decoder", cache=cache, use_cache=True)
        return self.answer_head(out.last_hidden_state[:, -1]), out.cache

    @torch.no_grad()
    def generate_answers(
        self, question: QuestionStates, max_length: int = 10, min_length: int = 1, num_beams: int = 3
    ) -> Tensor:
        """Decode answers ``(B, T)`` ([DEC] first; [PAD] after [SEP]) on the KV cache.

        BLIP's settings: 3 beams, ``max_length`` 10 and ``min_length`` 1 counting [DEC]
        (:func:`~lightning_blip.models.shared.generation.generate_ids`; 1 beam = greedy). A question's
        cross-attention keys/values are computed once and shared by its beams. BLIP's generation
        gives the decoder an all-ones question mask, so a padded batch attends to its padding; pass
        ``QuestionStates(states, None)`` to reproduce that (``answer(..., attend_question_padding=True)``;
        the default masks it, so a batch answers as each question alone).
        """
        start = torch.full(
            (question.states.shape[0], 1), self.config.bos_token_id, device=question.states.device
        )
        return generate_ids(
            self, question, start, num_beams=num_beams, max_length=max_length, min_length=min_length
        )

    # ranking -------------------------------------------------------------------------------------
    @torch.no_grad()
    def rank_answers(
        self, question: QuestionStates, candidate_ids: Tensor, candidate_mask: Tensor, k: int = 128
    ) -> Tensor:
        """Index ``(B,)`` of the best of C candidate answers for each question (BLIP's ``rank_answer``).

        The k candidates whose first token is most probable after [DEC] are selected (this only
        selects); each is scored by minus its label-smoothed (0.1) cross entropy summed over its
        tokens, [SEP] included; the best score wins. The question's cross-attention keys/values and
        the [DEC] step are computed once and shared by its k candidates (not copied per candidate).

        Args:
            question: states of B questions.
            candidate_ids: ``(C, Lc)`` ``[CLS] ... [SEP]`` ids of the answer list, padded.
            candidate_mask: ``(C, Lc)``.
            k: candidates scored per question (BLIP: 128); at most C.
        """
        B = question.states.shape[0]
        k = min(k, candidate_ids.shape[0])
        start = torch.full((B, 1), self.config.bos_token_id, device=candidate_ids.device)
        first = self.answer_decoder(
            start, torch.ones_like(start), "decoder", cache=self.start_decoding(question), use_cache=True
        )
        first_hidden = first.last_hidden_state  # (B, 1, D)
        probs = self.answer_head(first_hidden[:, 0]).float().softmax(dim=-1)
        topk = probs[:, candidate_ids[:, 1]].topk(k, dim=1).indices  # (B, k)

        rows = torch.arange(B, device=topk.device).repeat_interleave(k)
        ids = candidate_ids[topk.flatten()]
        mask = candidate_mask[topk.flatten()]
        ids[:, 0] = self.config.bos_token_id
        # the [DEC] self-attention keys/values per candidate; question memory: one row per k candidates
        cache = [c._replace(self_kv=(c.self_kv[0][rows], c.self_kv[1][rows])) for c in first.cache]
        rest = self.answer_decoder(ids[:, 1:], mask, "decoder", cache=cache)
        hidden = torch.cat([first_hidden[rows], rest.last_hidden_state], dim=1)
        labels = lm_labels(ids, mask)
        scored = scored_positions(labels)
        scores = -sequence_lm_loss(self.answer_head(hidden[:, :-1][scored]), labels, 0.1, scored)
        best = scores.view(B, k).argmax(dim=1, keepdim=True)
        return topk.gather(1, best).squeeze(1)

    # strings in, strings out ---------------------------------------------------------------------
    @torch.no_grad()
    def answer(
        self,
        pixel_values: Tensor,
        questions: list[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        mode: InferenceMode = "generate",
        answer_list: list[str] | None = None,
        k: int = 128,
        max_length: int = 10,
        min_length: int = 1,
        num_beams: int = 3,
        attend_question_padding: bool = False,
    ) -> list[str]:
        """One answer per (image ``(B, 3, H, W)``, question) by generation or by ranking ``answer_list``.

        ``questions``: one per image, or one asked of every image. They are tokenised as given (the
        data pipeline applies BLIP's ``pre_question`` first); ``tokenizer`` None uses the bundled
        bert-base-uncased vocabulary. ``attend_question_padding`` (generation only): the answer
        decoder reads the padding of shorter questions in a batch, as BLIP's and LAVIS's generation
        do (an all-ones question mask); False masks it, so a batch answers as each question alone.
        Ranking always masks it, as BLIP and LAVIS.

        Raises:
            ValueError: neither one question nor one per image (both counts named).
        """
        tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        device = pixel_values.device
        questions = one_per_image(questions, pixel_values.shape[0], "questions")
        ids, mask = tokenize_questions(tokenizer, questions)
        question = self.encode_questions(self.encode_image(pixel_values), ids.to(device), mask.to(device))
        if mode == "generate":
            if attend_question_padding:
                question = QuestionStates(question.states, None)
            ids = self.generate_answers(question, max_length, min_length, num_beams)
            return decode_captions(tokenizer, ids)
        if mode == "rank":
            if not answer_list:
                raise ValueError("mode='rank' needs an answer_list")
            cand_ids, cand_mask = tokenize_answers(tokenizer, list(answer_list))
            best = self.rank_answers(question, cand_ids.to(device), cand_mask.to(device), k)
            return [answer_list[i] for i in best.tolist()]
        raise ValueError(f"mode must be 'generate' or 'rank', got {mode!r}")

    # initialisation ------------------------------------------------------------------------------
    def load_pretrained(self, source: str | Path | dict[str, Tensor]) -> LoadReport:
        """Initialise from a pretrained MED or from a VQA checkpoint.

        ``source``: a weights file (safetensors or a torch file, a Lightning checkpoint included) or a
        state dict. With :class:`~lightning_blip.models.blip.model.BlipModel` keys (``model.blip.`` of a
        ``MEDPretrain`` checkpoint is stripped): the ViT from its ViT (position embeddings
        interpolated to this image size), the question encoder from its text model without the
        decoder self-attention, the answer decoder from its text model without the encoder
        self-attention, and the answer head from its LM head. A weight whose shape differs stays at
        its initialisation and is reported (as salesforce/BLIP's ``load_checkpoint`` drops it). With
        :class:`BlipVQA` keys (``model.`` stripped): loaded as they are.

        Raises:
            KeyError: a weight of this model is missing from ``source`` (named).
        """
        state = source if isinstance(source, dict) else load_state_dict_file(source)
        state = {k.removeprefix("model.").removeprefix("blip."): v for k, v in state.items()}
        vqa_format = any(k.startswith("question_encoder.") for k in state)
        mapped: dict[str, Tensor] = {}
        ignored: list[str] = []
        for key, value in state.items():
            targets = [key] if vqa_format else _med_to_vqa(key)
            if not targets:
                ignored.append(key)
            for target in targets:
                mapped[target] = value
        vision = {
            k.removeprefix("visual_encoder."): v for k, v in mapped.items() if k.startswith("visual_encoder.")
        }
        self.visual_encoder.load_vit_state_dict(vision, strict=True, source="pretrained weights")
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("visual_encoder.")}
        missing = [k for k in own if k not in mapped]
        if missing:
            raise KeyError(f"pretrained weights lack {len(missing)} keys, e.g. {missing[:5]}")
        mismatched = [k for k in own if mapped[k].shape != own[k].shape]
        loaded = [k for k in own if k not in mismatched]
        self.load_state_dict({k: mapped[k] for k in loaded}, strict=False)
        ignored += [k for k in mapped if not k.startswith("visual_encoder.") and k not in own]
        loaded += [f"visual_encoder.{k}" for k in vision]
        return LoadReport(loaded=sorted(loaded), mismatched=sorted(mismatched), ignored=sorted(ignored))


def _med_to_vqa(key: str) -> list[str]:
    """The :class:`BlipVQA` names a :class:`BlipModel` weight initialises (none for ITC/ITM heads)."""
    if key.startswith("visual_encoder."):
        return [key]
    if key.startswith("lm_head."):
        return ["answer_head." + key.removeprefix("lm_head.")]
    if not key.startswith("text."):
        return []
    name = key.removeprefix("text.")
    targets = []
    if not _DECODER_SELF_ATTN.match(name):
        targets.append("question_encoder." + name)
    if not _ENCODER_SELF_ATTN.match(name):
        targets.append("answer_decoder." + name)
    return targets
