"""CapFilt's model steps, without Lightning: sample synthetic captions, score texts, keep or drop them.

BLIP's captioner samples one caption per web image (nucleus sampling, the released demo's settings);
the filter's ITM head judges the web text and each synthetic caption separately. BLIP-2 samples 10
captions and keeps the 2 texts (web text included) of highest image-text similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_blip.checks import check_config
from lightning_blip.data.text import pre_caption
from lightning_blip.layers.attention import index_kv
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.shared.generation import decode_captions, generate_ids


@dataclass(frozen=True)
class CaptionSettings:
    """The captioner's nucleus sampling.

    Attributes:
        num_captions: synthetic captions per image (BLIP 1, BLIP-2's recipe 10).
        prompt: decoding prompt, removed from the captions.
        top_p: nucleus size.
        top_k: sample among the k most likely tokens only; BLIP's sampling inherits transformers'
            default 50 (0: off).
        min_length: [SEP] is suppressed before this many tokens, [DEC] and the prompt included.
        max_length: most tokens, [DEC] and the prompt included.
        repetition_penalty: BLIP hard-codes 1.1 for sampling (LAVIS: 1.0).
    """

    num_captions: int = 1
    prompt: str = "a picture of "
    top_p: float = 0.9
    top_k: int = 50
    min_length: int = 5
    max_length: int = 20
    repetition_penalty: float = 1.1

    def __post_init__(self) -> None:
        check_config("captioning.num_captions", self.num_captions >= 1, ">= 1", self.num_captions)
        check_config("captioning.top_p", 0 < self.top_p <= 1, "in (0, 1]", self.top_p)
        check_config("captioning.top_k", self.top_k >= 0, ">= 0 (0: off)", self.top_k)
        check_config("captioning.min_length", 1 <= self.min_length <= self.max_length,
                     f"in [1, max_length={self.max_length}]", self.min_length)  # fmt: skip
        check_config(
            "captioning.repetition_penalty", self.repetition_penalty > 0, "> 0", self.repetition_penalty
        )


@dataclass(frozen=True)
class FilterSettings:
    """Which texts of an image are kept.

    Attributes:
        threshold: keep a text whose ITM match probability is at least this (BLIP: argmax, 0.5);
            ``None``: no ITM filter.
        top_n: then keep only the ``top_n`` texts of highest ITC similarity (BLIP-2 ranks with 2);
            ``None``: no ranking.
        max_words: ``pre_caption`` word limit of the texts the filter reads.
    """

    threshold: float | None = 0.5
    top_n: int | None = None
    max_words: int = 30

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_config("filtering.threshold", 0 <= self.threshold <= 1, "a probability in [0, 1], or null",
                         self.threshold)  # fmt: skip
        if self.top_n is not None:
            check_config("filtering.top_n", self.top_n >= 1, ">= 1, or null", self.top_n)
        check_config("filtering.max_words", self.max_words >= 1, ">= 1", self.max_words)


@torch.no_grad()
def sample_captions(
    model: BlipModel, pixel_values: Tensor, tokenizer, settings: CaptionSettings, generator: torch.Generator
) -> list[list[str]]:
    """``settings.num_captions`` sampled captions of each image ``(B, 3, H, W)``: ``B`` lists of strings.

    The draws come from ``generator`` only, so equal inputs and seed give equal captions.
    """
    k = settings.num_captions
    image_embeds = model.forward_image(pixel_values).repeat_interleave(k, dim=0)  # (B * k, 1 + N, D)
    prompt = tokenizer([settings.prompt] * len(image_embeds), return_tensors="pt").input_ids[:, :-1]
    ids = generate_ids(
        model,
        image_embeds,
        prompt.to(pixel_values.device),
        max_length=settings.max_length,
        min_length=settings.min_length,
        repetition_penalty=settings.repetition_penalty,
        do_sample=True,
        top_p=settings.top_p,
        top_k=settings.top_k,
        generator=generator,
    )
    texts = decode_captions(tokenizer, ids, settings.prompt)
    return [texts[i * k : (i + 1) * k] for i in range(len(pixel_values))]


@torch.no_grad()
def score_texts(
    model: BlipModel,
    pixel_values: Tensor,
    texts: Sequence[Sequence[str]],
    tokenizer=None,
    max_words: int = 30,
) -> tuple[list[Tensor], list[Tensor]]:
    """ITM match probabilities and ITC similarities of each image ``(B, 3, H, W)`` with its own texts.

    ``texts[i]`` are image i's candidates (normalised by ``pre_caption`` first). Returns two lists
    of ``B`` tensors ``(T_i,)``. The image's ViT tokens and cross-attention keys/values are computed
    once and shared by its texts.
    """
    owner = torch.tensor([i for i, group in enumerate(texts) for _ in group], device=pixel_values.device)
    flat = [pre_caption(text, max_words) for group in texts for text in group]
    ids, mask = model.tokenize(flat, tokenizer=tokenizer)
    image_embeds = model.forward_image(pixel_values)
    image_kv = index_kv(model.image_kv(image_embeds), owner)
    itm = model.itm_logits(ids, mask, image_kv=image_kv).float().softmax(dim=-1)[:, 1]
    image_feats = model.encode_image_embeds(image_embeds)[owner]
    itc = (image_feats * model.encode_text(ids, mask)).sum(dim=-1).float()
    sizes = [len(group) for group in texts]
    return list(itm.cpu().split(sizes)), list(itc.cpu().split(sizes))


def select_texts(itm_prob: Tensor, itc_sim: Tensor, settings: FilterSettings) -> list[bool]:
    """Which of one image's texts ``(T,)`` to keep: ITM probability >= threshold, then the top n by ITC
    similarity among those (ties: the earlier text)."""
    keep = [True] * len(itm_prob) if settings.threshold is None else (itm_prob >= settings.threshold).tolist()
    if settings.top_n is not None:
        ranked = sorted((i for i, k in enumerate(keep) if k), key=lambda i: (-float(itc_sim[i]), i))
        chosen = set(ranked[: settings.top_n])
        keep = [i in chosen for i in range(len(keep))]
    return keep
