"""Retrieval hit rates: R@1 from ITC features, and the COCO/Flickr R@1/5/10 report."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_blip.metrics.sync import TypedListMetric, cat_state, first_occurrence

Similarity = Callable[[Tensor, Tensor], Tensor]
_MAX_FEATURE_DIMS = 3  # trailing feature dimensions RetrievalRecall keeps: (E,), (Q, E), ...


def dot_similarity(image: Tensor, text: Tensor) -> Tensor:
    """``(N, E)`` x ``(M, E)`` -> ``(N, M)`` dot products (BLIP's ITC similarity)."""
    return image @ text.t()


def recall_at_1(
    image: Tensor,
    text: Tensor,
    ids: Tensor,
    index: Tensor | None = None,
    similarity: Similarity = dot_similarity,
    image_ids: Tensor | None = None,
) -> dict[str, float]:
    """Image-to-text and text-to-image R@1 where row i of ``image`` and ``text`` form a pair.

    Args:
        image: ``(N, ...)`` image features (``(N, E)``; BLIP-2: ``(N, Q, E)``); ``text``: ``(N, E)``.
        ids: ``(N,)`` a retrieved item is a hit when its id equals the query's (image ids, or
            caption ids when captions repeat across images).
        index: ``(N,)`` dataset indices; rows that repeat an index (padding added by a
            distributed sampler) are dropped first.
        similarity: ``(image, text)`` -> ``(N, N)`` scores (BLIP-2: max over queries).
        image_ids: ``(N,)`` which rows show the same image (an image with several captions has
            several rows): image-to-text counts each image once, a hit when its top text is a hit
            for any of its rows. None: every row is its own image.

    Returns ``{"i2t_r1", "t2i_r1"}``: the fraction of images (texts) whose top text (image) is a hit.
    """
    if index is not None:
        first = first_occurrence(index)
        image, text, ids = image[first], text[first], ids[first]
        image_ids = None if image_ids is None else image_ids[first]
    sim = similarity(image.float(), text.float())
    if image_ids is None:
        image_hits = ids[sim.argmax(dim=1)] == ids
    else:
        queries = first_occurrence(image_ids)  # one row per image
        top = sim[queries].argmax(dim=1)
        same_image = image_ids[queries][:, None] == image_ids[None, :]
        image_hits = ((ids[top][:, None] == ids[None, :]) & same_image).any(dim=1)
    return {
        "i2t_r1": image_hits.float().mean().item(),
        "t2i_r1": (ids[sim.argmax(dim=0)] == ids).float().mean().item(),
    }


def retrieval_recall(
    sim_i2t: Tensor, txt2img: Tensor, ks: tuple[int, ...] = (1, 5, 10), sim_t2i: Tensor | None = None
) -> dict[str, float]:
    """COCO / Flickr30k retrieval report (hit rates, as LAVIS's ``_report_metrics`` computes them).

    Args:
        sim_i2t: ``(N_img, N_txt)`` scores of every image against every text (ITC, or ITM re-ranked).
        txt2img: ``(N_txt,)`` the index (row of ``sim_i2t``) of each text's image; every image needs
            at least one text.
        ks: the cut-offs K.
        sim_t2i: ``(N_img, N_txt)`` scores for text-to-image retrieval (ranked down each column),
            when they differ from ``sim_i2t``: ITM re-ranking re-scores each text's top-k images,
            not each image's top-k texts. Default: ``sim_i2t``.

    Returns fractions in ``[0, 1]``: ``txt_r{k}`` (image-to-text: images with any of their texts in
    the top k), ``img_r{k}`` (text-to-image: texts whose image is in the top k), their means
    ``txt_r_mean``, ``img_r_mean`` and ``r_mean`` (mean of all). A tie with a wrong item counts as
    a hit (the rank is the number of strictly higher scores).
    """
    n_img, n_txt = sim_i2t.shape
    txt2img = txt2img.to(device=sim_i2t.device, dtype=torch.long)
    if txt2img.shape != (n_txt,):
        raise ValueError(f"txt2img must have shape ({n_txt},), got {tuple(txt2img.shape)}")
    if torch.bincount(txt2img, minlength=n_img).min() == 0 or txt2img.max() >= n_img:
        raise ValueError("every image needs at least one text and txt2img must index rows of sim_i2t")
    if sim_t2i is not None and sim_t2i.shape != sim_i2t.shape:
        raise ValueError(f"sim_t2i must have shape {tuple(sim_i2t.shape)}, got {tuple(sim_t2i.shape)}")
    columns = torch.arange(n_txt, device=sim_i2t.device)
    own = sim_i2t[txt2img, columns]  # (N_txt,) text vs its image
    best_own = torch.full((n_img,), -torch.inf, dtype=own.dtype, device=own.device)
    best_own = best_own.scatter_reduce(0, txt2img, own, reduce="amax")  # (N_img,) best own text
    txt_rank = (sim_i2t > best_own[:, None]).sum(dim=1)  # (N_img,) rank of the first own text
    sim_t2i = sim_i2t if sim_t2i is None else sim_t2i.to(sim_i2t.device)
    own_t2i = sim_t2i[txt2img, columns]
    img_rank = (sim_t2i > own_t2i[None, :]).sum(dim=0)  # (N_txt,) rank of the text's image
    out = {f"txt_r{k}": (txt_rank < k).double().mean().item() for k in ks}
    out |= {f"img_r{k}": (img_rank < k).double().mean().item() for k in ks}
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


class RetrievalRecall(TypedListMetric):
    """:func:`retrieval_recall` over the whole set from ``(image, text)`` pair features; syncs across ranks.

    ``update(image, text, image_ids, index=None)`` takes rows of pairs as a caption dataset yields
    them: ``image`` ``(B, ...)`` features (BLIP-2: ``(B, Q, E)``), ``text`` ``(B, E)``, ``image_ids``
    ``(B,)`` (rows with the same image id share one image) and optional dataset ``index`` ``(B,)``
    (a repeated index, distributed padding, is dropped). ``compute()`` scores every distinct image
    (its first row's features) against every text with ``similarity`` and returns the dict of
    :func:`retrieval_recall` as float64 tensors. For ITM re-ranking, call :func:`retrieval_recall`
    with the re-ranked scores.

    Features are kept in float32 and flattened, with their trailing shapes in a state of their own
    (reduced by ``max``), so that a rank that saw no pair still syncs with the others.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, similarity: Similarity = dot_similarity, ks: tuple[int, ...] = (1, 5, 10), **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.similarity = similarity
        self.ks = tuple(ks)
        for name, dtype in (("image", torch.float32), ("text", torch.float32)):
            self.add_list_state(name, dtype)
            # the features' trailing shape, padded with zeros: (ndim, d1, ..., d_MAX_FEATURE_DIMS)
            self.add_state(f"{name}_shape", default=torch.zeros(1 + _MAX_FEATURE_DIMS, dtype=torch.long),
                           dist_reduce_fx="max")  # fmt: skip
        for name in ("image_ids", "index"):
            self.add_list_state(name, torch.int64)

    def update(self, image: Tensor, text: Tensor, image_ids: Tensor, index: Tensor | None = None) -> None:
        if not len(image) == len(text) == len(image_ids):
            raise ValueError("image, text and image_ids need the same number of rows")
        for name, features in (("image", image), ("text", text)):
            seen = getattr(self, f"{name}_shape")
            shape = _feature_shape(features).to(seen.device)
            if int(seen[0]) and not torch.equal(seen, shape):
                raise ValueError(f"{name} features of shape {tuple(features.shape[1:])} after "
                                 f"{tuple(_features(features.new_empty(0), seen).shape[1:])}")  # fmt: skip
            setattr(self, f"{name}_shape", shape)
            getattr(self, name).append(features.detach().float().reshape(-1))
        self.image_ids.append(image_ids.detach().long().reshape(-1))
        self.index.append(
            torch.full_like(self.image_ids[-1], -1) if index is None else index.detach().long().reshape(-1)
        )

    def compute(self) -> dict[str, Tensor]:
        image_ids, index = cat_state(self.image_ids), cat_state(self.index)
        if len(image_ids) == 0:
            raise ValueError("RetrievalRecall.compute() needs at least one update (on some rank)")
        image, text = (
            _features(cat_state(getattr(self, n)), getattr(self, f"{n}_shape")) for n in ("image", "text")
        )
        rows = first_occurrence(index.long())
        image, text, image_ids = image[rows], text[rows], image_ids[rows].long()
        unique_ids, txt2img = torch.unique(image_ids, return_inverse=True)
        first_row = torch.full_like(unique_ids, len(image_ids)).scatter_reduce(
            0, txt2img, torch.arange(len(image_ids), device=txt2img.device), reduce="amin"
        )
        sim = self.similarity(image[first_row], text)
        return {
            k: torch.tensor(v, dtype=torch.float64)
            for k, v in retrieval_recall(sim, txt2img, self.ks).items()
        }


def _feature_shape(features: Tensor) -> Tensor:
    """``(B, *F)`` -> ``(1 + _MAX_FEATURE_DIMS,)`` long: ``len(F)``, then ``F`` padded with zeros."""
    trailing = list(features.shape[1:])
    if not 1 <= len(trailing) <= _MAX_FEATURE_DIMS:
        raise ValueError(
            f"features need 1 to {_MAX_FEATURE_DIMS} dimensions after the batch, got {tuple(trailing)}"
        )
    return torch.tensor([len(trailing), *trailing, *[0] * (_MAX_FEATURE_DIMS - len(trailing))])


def _features(flat: Tensor, shape: Tensor) -> Tensor:
    """A flattened feature state and its :func:`_feature_shape` -> ``(N, *F)``."""
    return flat.view(-1, *shape[1 : 1 + int(shape[0])].tolist())
