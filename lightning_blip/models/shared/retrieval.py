"""Image-text retrieval without Lightning: ITC scores of every pair, ITM re-ranking of the top k.

BLIP's and BLIP-2's evaluation (salesforce/BLIP ``train_retrieval.py``, LAVIS ``compute_sim_matrix``):
the ITC similarity of every image with every text, then, for each image, its k most similar texts
and, for each text, its k most similar images are scored again with ITM. A re-ranked entry is the
raw ITM "match" logit (not its softmax) plus the ITC similarity; every other entry is -100.

Unlike the reference, which repeats an image's ViT tokens once per candidate text and projects its
cross-attention keys/values again in every pass, :func:`score_pairs` groups the pairs by image and
projects each image's keys/values once for all of its candidates (image-to-text and text-to-image
alike; a pair in both top-k lists is scored once). Works for any model with the methods of
:class:`RetrievalModel` (:class:`~lightning_blip.models.blip.model.BlipModel`,
:class:`~lightning_blip.models.blip2.model.Blip2Model`), which also get the inference calls of
:class:`RetrievalMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from lightning_blip.layers.attention import KeyValue
from lightning_blip.losses.gather import (
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
    pad_to,
    rank_and_world,
)
from lightning_blip.models.shared.tokenizer import default_tokenizer

NOT_RANKED = -100.0
"""Score of a pair outside the top k (BLIP's evaluation)."""


class RetrievalModel(Protocol):
    """What the re-ranking needs from a model (both BLIP and BLIP-2 provide it)."""

    def forward_image(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> image tokens ``(B, N, Dv)``."""

    def encode_image_embeds(self, image_embeds: Tensor, normalize: bool = True) -> Tensor:
        """Image tokens -> ITC features ``(B, E)`` (BLIP-2: ``(B, Q, E)``)."""

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
        """Token ids ``(B, L)`` -> ITC features ``(B, E)``."""

    def similarity(self, image_feats: Tensor, text_feats: Tensor) -> Tensor:
        """ITC features -> ``(I, T)`` similarities (before the temperature)."""

    def image_kv(self, image_embeds: Tensor) -> list[KeyValue | None]:
        """Image tokens -> per-layer cross-attention keys/values."""

    def itm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor | None = None,
        image_kv: list[KeyValue | None] | None = None,
    ) -> Tensor:
        """ITM logits ``(B, 2)``, index 1 = match."""


def expand_kv(image_kv: list[KeyValue | None], n: int) -> list[KeyValue | None]:
    """One image's keys/values (1 row per layer) viewed as ``n`` rows, without copying."""
    return [
        None if kv is None else (kv[0].expand(n, -1, -1, -1), kv[1].expand(n, -1, -1, -1)) for kv in image_kv
    ]


def trim_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns ``(B, L)`` that are padding in every row."""
    length = max(1, int(attention_mask.sum(dim=1).max())) if len(attention_mask) else input_ids.shape[1]
    return input_ids[:, :length], attention_mask[:, :length]


class RetrievalMixin:
    """Inference calls ``itc_similarity`` and ``itm_score`` for a model with the :class:`RetrievalModel`
    methods and ``encode_image``. Texts are given as strings (tokenised with the BLIP tokenizer, at
    most ``max_length`` tokens as in BLIP's evaluation) or as ``input_ids`` / ``attention_mask``.
    Run the model in eval mode for deterministic scores.
    """

    def tokenize(self, texts: Sequence[str], max_length: int = 35, tokenizer=None) -> tuple[Tensor, Tensor]:
        """Strings -> ids and mask ``(B, L)`` ([CLS] ... [SEP], padded to the longest), on the model's device."""
        tokens = (default_tokenizer() if tokenizer is None else tokenizer)(
            list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = next(self.parameters()).device
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def _text_inputs(self, texts, input_ids, attention_mask, tokenizer, max_length) -> tuple[Tensor, Tensor]:
        if (texts is None) == (input_ids is None):
            raise ValueError("pass either texts or input_ids")
        if isinstance(texts, str):
            texts = [texts]
        if texts is not None:
            return self.tokenize(texts, max_length, tokenizer)
        return input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask

    @torch.no_grad()
    def itc_similarity(
        self,
        pixel_values: Tensor,
        texts: Sequence[str] | str | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        tokenizer=None,
        max_length: int = 35,
    ) -> Tensor:
        """ITC similarity ``(B_img, B_txt)`` of every image ``(B_img, 3, H, W)`` with every text.

        Cosine similarity of the projected features, before the temperature (BLIP-2: the max over
        the image's queries).
        """
        ids, mask = self._text_inputs(texts, input_ids, attention_mask, tokenizer, max_length)
        return self.similarity(self.encode_image(pixel_values), self.encode_text(ids, mask)).float()

    @torch.no_grad()
    def itm_score(
        self,
        pixel_values: Tensor,
        texts: Sequence[str] | str | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        tokenizer=None,
        max_length: int = 35,
    ) -> Tensor:
        """ITM match probability ``(B,)`` of image i and text i (softmax of the logits, index 1).

        ``pixel_values`` ``(B, 3, H, W)``, or ``(1, 3, H, W)`` to score one image against every text
        (its keys/values are computed once).
        """
        ids, mask = self._text_inputs(texts, input_ids, attention_mask, tokenizer, max_length)
        n_img, n_txt = pixel_values.shape[0], ids.shape[0]
        if n_img not in (1, n_txt):
            raise ValueError(f"{n_img} images for {n_txt} texts: give one image or one per text")
        image_kv = self.image_kv(self.forward_image(pixel_values))
        if n_img == 1 and n_txt > 1:
            image_kv = expand_kv(image_kv, n_txt)
        return self.itm_logits(ids, mask, image_kv=image_kv).float().softmax(dim=-1)[:, 1]


# re-ranking ---------------------------------------------------------------------------------------
def topk_masks(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Similarities ``(I, T)`` -> boolean masks ``(I, T)`` of each image's top-k texts (image-to-text)
    and of each text's top-k images (text-to-image); k is capped by the number of candidates."""
    i2t = torch.zeros_like(sim, dtype=torch.bool)
    t2i = torch.zeros_like(sim, dtype=torch.bool)
    if sim.numel():
        i2t.scatter_(1, sim.topk(min(k, sim.shape[1]), dim=1).indices, True)
        t2i.scatter_(0, sim.topk(min(k, sim.shape[0]), dim=0).indices, True)
    return i2t, t2i


@torch.no_grad()
def score_pairs(
    model: RetrievalModel,
    image_embeds: Tensor,
    image_index: Tensor,
    text_index: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    batch_size: int = 256,
) -> Tensor:
    """ITM match logits ``(P,)`` of the pairs (``image_embeds[image_index[p]]``, ``input_ids[text_index[p]]``).

    Pairs are grouped by image: each image's tokens are moved to the model's device and its
    cross-attention keys/values projected once, then shared (not copied) by its candidate texts,
    ``batch_size`` texts per ITM pass. ``image_embeds`` ``(I, N, Dv)`` may live on the CPU.
    """
    device = input_ids.device
    out = torch.empty(len(image_index), dtype=torch.float32, device=device)
    if len(image_index) == 0:
        return out
    order = torch.argsort(image_index, stable=True)
    images, counts = torch.unique_consecutive(image_index[order], return_counts=True)
    for image, positions in zip(images.tolist(), order.split(counts.tolist())):
        image_kv = model.image_kv(image_embeds[image : image + 1].to(device, non_blocking=True))
        for chunk in positions.split(batch_size):
            texts = text_index[chunk]
            ids, mask = trim_padding(input_ids[texts], attention_mask[texts])
            logits = model.itm_logits(ids, mask, image_kv=expand_kv(image_kv, len(chunk)))
            out[chunk] = logits[:, 1].float()
    return out


class RerankedScores(NamedTuple):
    """Result of :func:`rerank`, rows = images and columns = texts, sorted by their ids.

    Attributes:
        sim: ``(I, T)`` ITC similarities.
        i2t: ``(I, T)`` image-to-text scores: ITM match logit + ITC similarity for each image's top-k
            texts, -100 elsewhere.
        t2i: ``(I, T)`` text-to-image scores: the same for each text's (column's) top-k images.
        image_ids: ``(I,)`` id of each row; ``text_ids``: ``(T,)`` id of each column.
        txt2img: ``(T,)`` row of each text's image (from ``text_image_ids``), or None.
    """

    sim: Tensor
    i2t: Tensor
    t2i: Tensor
    image_ids: Tensor
    text_ids: Tensor
    txt2img: Tensor | None


def _unique_rows(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct ids ``(U,)`` and, for each, the position of its first occurrence in ``ids``."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full_like(unique, len(ids)).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first


@torch.no_grad()
def rerank(
    model: RetrievalModel,
    image_embeds: Tensor,
    image_feats: Tensor,
    text_feats: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    k: int,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    text_image_ids: Tensor | None = None,
    batch_size: int = 256,
    pad_token_id: int = 0,
) -> RerankedScores:
    """ITC scores of every image-text pair and ITM re-ranking of the top k (BLIP's evaluation).

    Each rank passes the images and texts it encoded; with ``torch.distributed`` initialised the
    features, ids and texts are gathered (rows may differ per rank; repeated ids, a distributed
    sampler's padding, are kept once), every rank computes the same similarities and top-k lists,
    scores with ITM the pairs of the images it holds, and the scores are summed over ranks (each
    pair comes from one rank, so W ranks give exactly the 1-rank result).

    Args:
        model: a :class:`RetrievalModel` (BLIP or BLIP-2), in eval mode.
        image_embeds: ``(I_rank, N, Dv)`` this rank's image tokens (``forward_image``), any device.
        image_feats: ``(I_rank, E)`` (BLIP-2: ``(I_rank, Q, E)``) their ITC features.
        text_feats: ``(T_rank, E)`` this rank's text ITC features.
        input_ids: ``(T_rank, L)`` their token ids ([CLS] first); ``attention_mask`` ``(T_rank, L)``.
        k: candidates re-ranked per query (BLIP's ``k_test``: 256 COCO, 128 Flickr30k).
        image_ids, text_ids: ``(I_rank,)``, ``(T_rank,)`` global ids (default: 0, 1, ... on one rank).
        text_image_ids: ``(T_rank,)`` the image id of each text, to return ``txt2img``.
        batch_size: texts per ITM pass.
        pad_token_id: pads token ids of different lengths when gathering.
    """
    device = text_feats.device
    rank, world = rank_and_world()
    if image_ids is None or text_ids is None:
        if world > 1:
            raise ValueError("with several ranks, pass image_ids and text_ids")
        image_ids = torch.arange(len(image_feats), device=device) if image_ids is None else image_ids
        text_ids = torch.arange(len(text_feats), device=device) if text_ids is None else text_ids
    image_ids, text_ids = image_ids.to(device).long(), text_ids.to(device).long()
    local = torch.arange(len(image_ids), device=device)
    has_txt2img = text_image_ids is not None
    if text_image_ids is None:
        text_image_ids = torch.zeros_like(text_ids)
    text_image_ids = text_image_ids.to(device).long()
    if world > 1:
        length = all_reduce_max(input_ids.shape[1], device)
        input_ids, attention_mask = pad_to(input_ids, length, pad_token_id), pad_to(attention_mask, length, 0)
        owner = torch.full_like(image_ids, rank)
        image_feats, image_ids, owner, local = map(all_gather_rows, (image_feats, image_ids, owner, local))
        text_feats, input_ids, attention_mask, text_ids, text_image_ids = map(
            all_gather_rows, (text_feats, input_ids, attention_mask, text_ids, text_image_ids)
        )
    else:
        owner = torch.zeros_like(image_ids)
    image_ids, first = _unique_rows(image_ids)
    image_feats, owner, local = image_feats[first], owner[first], local[first]
    text_ids, first = _unique_rows(text_ids)
    text_feats, input_ids, attention_mask = text_feats[first], input_ids[first], attention_mask[first]
    text_image_ids = text_image_ids[first]

    sim = model.similarity(image_feats.float(), text_feats.float()).float()
    i2t_mask, t2i_mask = topk_masks(sim, k)
    pairs = torch.nonzero(i2t_mask | t2i_mask)  # (P, 2), the same list on every rank
    mine = owner[pairs[:, 0]] == rank
    itm = torch.zeros(len(pairs), dtype=torch.float32, device=device)
    itm[mine] = score_pairs(
        model, image_embeds, local[pairs[mine, 0]], pairs[mine, 1], input_ids, attention_mask, batch_size
    )
    rows, cols = pairs[:, 0], pairs[:, 1]
    scores = all_reduce_sum(itm) + sim[rows, cols]
    i2t, t2i = torch.full_like(sim, NOT_RANKED), torch.full_like(sim, NOT_RANKED)
    for out, mask in ((i2t, i2t_mask), (t2i, t2i_mask)):
        keep = mask[rows, cols]
        out[rows[keep], cols[keep]] = scores[keep]
    txt2img = None
    if has_txt2img:
        txt2img = torch.searchsorted(image_ids, text_image_ids).clamp(max=max(0, len(image_ids) - 1))
        if len(image_ids) and not torch.equal(image_ids[txt2img], text_image_ids):
            raise ValueError("a text's image id is not among the images")
    return RerankedScores(sim, i2t, t2i, image_ids, text_ids, txt2img)
