"""Released BLIP and BLIP-2 checkpoints, and the pretrained parts the recipes start from, by name.

Each :class:`Pretrained` entry says where the file comes from (a URL or a transformers hub id), its
format (what reads it), which of our classes it becomes, the configuration it needs, its task, and the
published number it should reproduce. ``sha256`` is the checksum prefix the file's name carries (torch
hub's convention, checked on download) where the publisher gives one; None means the download is not
verified. Sources (facts, read from the publishers):

- salesforce/BLIP ``README.md`` (pretrained and fine-tuned checkpoint tables); its metrics: BLIP
  paper tables 5 (retrieval), 7 (captioning), 8 (VQA), and LAVIS's model-zoo re-run where it says so.
- salesforce/LAVIS ``lavis/configs/models/blip2/*.yaml`` (``pretrained`` / ``finetuned`` URLs, image
  sizes, LLMs) and ``lavis/models/eva_vit.py`` (EVA ViT-g); metrics: BLIP-2 paper tables 2 (zero-shot
  VQAv2 test-dev), 3 (NoCaps val CIDEr after COCO fine-tuning) and 5 (COCO retrieval fine-tuned).
- The transformers hub ``Salesforce/blip-*`` / ``Salesforce/blip2-*`` repositories: conversions of the
  same checkpoints (same numbers).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

BLIP_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
LAVIS_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/"

FORMATS = {
    "salesforce": "salesforce/BLIP .pth (BlipModel / BlipVQA: pass config='base' or 'large')",
    "lavis-blip2": "LAVIS BLIP-2 .pth (pass a Blip2Config / Blip2LLMConfig naming the LLM)",
    "transformers": "transformers save_pretrained directory on the hub",
    "timm": "ViT weights (vision.weights)",
    "eva-vit-g": "LAVIS's EVA-CLIP ViT-g/14 state dict (vision.weights)",
    "hf-bert": "BERT on the hub (text encoder / Q-Former initialisation)",
    "hf-llm": "a causal or seq2seq LLM on the hub (Blip2LLMConfig.llm)",
}


@dataclass(frozen=True)
class Pretrained:
    """One released checkpoint (or pretrained part).

    Attributes:
        name: what ``from_pretrained`` and the recipes call it.
        source: a URL, or a transformers hub id (``owner/name``).
        format: a key of :data:`FORMATS`.
        model: the class of ours it becomes (empty for a part: ViT, BERT, LLM).
        task: what it was trained for.
        config: what loading it needs (``vit``, ``image_size``, ``llm``).
        metric: the published number it should reproduce, and where it is published (None for
            pretraining checkpoints and parts, which have no number of their own).
        sha256: the checksum prefix the publisher put in the file's name; None: not verified.
    """

    name: str
    source: str
    format: str
    model: str
    task: str
    config: dict = field(default_factory=dict)
    metric: str | None = None
    sha256: str | None = None

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    @property
    def filename(self) -> str:
        """The file's name in the cache (URLs), or the hub id's last part."""
        return self.source.rsplit("/", 1)[-1]


def _blip(name: str, file: str, model: str, task: str, vit: str, size: int, metric: str | None) -> Pretrained:
    return Pretrained(
        name, BLIP_URL + file, "salesforce", model, task, {"vit": vit, "image_size": size}, metric
    )


def _lavis(
    name: str, file: str, model: str, task: str, size: int, llm: str | None, metric: str | None
) -> Pretrained:
    config = {"vit": "eva_vit_g" if "vitL" not in file else "clip_vit_l14", "image_size": size}
    return Pretrained(
        name, LAVIS_URL + file, "lavis-blip2", model, task, config | ({"llm": llm} if llm else {}), metric
    )


def _hub(hub_id: str, model: str, task: str, config: dict, metric: str | None) -> Pretrained:
    return Pretrained(hub_id, hub_id, "transformers", model, task, config, metric)


_COCO_B = "COCO 5k test TR@1 81.9 / IR@1 64.3 (BLIP Table 5, 129M ViT-B)"
_COCO_L = "COCO 5k test TR@1 82.4 / IR@1 65.1 (BLIP Table 5, 129M ViT-L)"
_FLICKR_B = "Flickr30k 1k test TR@1 97.3 (BLIP Table 5, 129M ViT-B)"
_FLICKR_L = "Flickr30k 1k test TR@1 97.4 (BLIP Table 5, 129M ViT-L)"
_CAP_B = "COCO Karpathy test CIDEr 133.5 (LAVIS model zoo, BLIP ViT-B CapFilt-L)"
_CAP_L = "COCO Karpathy test CIDEr 136.7, NoCaps val CIDEr 113.2 (BLIP Table 7, 129M ViT-L)"
_VQA_B = "VQAv2 test-dev 78.24 (BLIP Table 8, 129M ViT-B)"
_VQA_CAPFILT = "VQAv2 test-dev 78.23 (LAVIS model zoo re-run, BLIP ViT-B CapFilt-L)"
_B2_RET = "COCO 5k test TR@1 85.4 (BLIP-2 Table 5, ViT-g, fine-tuned)"

REGISTRY: tuple[Pretrained, ...] = (
    # salesforce/BLIP: pretraining (their fine-tuned descendants carry the numbers)
    _blip("blip-base-14m", "model_base_14M.pth", "BlipModel", "pretraining (14M images)", "base", 224, None),
    _blip("blip-base", "model_base.pth", "BlipModel", "pretraining (129M images)", "base", 224, None),
    _blip("blip-base-capfilt-large", "model_base_capfilt_large.pth", "BlipModel", "pretraining (129M, CapFilt-L)", "base", 224, None),
    _blip("blip-large", "model_large.pth", "BlipModel", "pretraining (129M images)", "large", 224, None),
    # salesforce/BLIP: fine-tuned
    _blip("blip-base-retrieval-coco", "model_base_retrieval_coco.pth", "BlipModel", "retrieval (COCO)", "base", 384, _COCO_B),
    _blip("blip-large-retrieval-coco", "model_large_retrieval_coco.pth", "BlipModel", "retrieval (COCO)", "large", 384, _COCO_L),
    _blip("blip-base-retrieval-flickr", "model_base_retrieval_flickr.pth", "BlipModel", "retrieval (Flickr30k)", "base", 384, _FLICKR_B),
    _blip("blip-large-retrieval-flickr", "model_large_retrieval_flickr.pth", "BlipModel", "retrieval (Flickr30k)", "large", 384, _FLICKR_L),
    _blip("blip-base-caption-capfilt-large", "model_base_caption_capfilt_large.pth", "BlipModel", "captioning (COCO)", "base", 384, _CAP_B),
    _blip("blip-large-caption", "model_large_caption.pth", "BlipModel", "captioning (COCO)", "large", 384, _CAP_L),
    _blip("blip-base-vqa", "model_vqa.pth", "BlipVQA", "VQA (VQAv2 + VG)", "base", 480, _VQA_B),
    _blip("blip-base-vqa-capfilt-large", "model_base_vqa_capfilt_large.pth", "BlipVQA", "VQA (VQAv2 + VG)", "base", 480, _VQA_CAPFILT),
    _blip("blip-base-nlvr", "model_base_nlvr.pth", "", "NLVR2 (no loader of ours yet)", "base", 384, "NLVR2 test-P 83.25 (LAVIS model zoo re-run)"),
    # LAVIS BLIP-2
    _lavis("blip2-pretrain", "blip2_pretrained.pth", "Blip2Model", "stage 1 (ViT-g)", 224, None, None),
    _lavis("blip2-pretrain-vitl", "blip2_pretrained_vitL.pth", "Blip2Model", "stage 1 (CLIP ViT-L/14)", 224, None, None),
    _lavis("blip2-coco", "blip2_finetune_coco.pth", "Blip2Model", "retrieval (COCO)", 364, None, _B2_RET),
    _lavis("blip2-opt2.7b", "blip2_pretrained_opt2.7b.pth", "Blip2ForGeneration", "stage 2", 224, "facebook/opt-2.7b", "zero-shot VQAv2 test-dev 52.3 (BLIP-2 Table 2)"),
    _lavis("blip2-opt6.7b", "blip2_pretrained_opt6.7b.pth", "Blip2ForGeneration", "stage 2", 224, "facebook/opt-6.7b", "zero-shot VQAv2 test-dev 52.6 (BLIP-2 Table 2)"),
    _lavis("blip2-flant5xl", "blip2_pretrained_flant5xl.pth", "Blip2ForGeneration", "stage 2", 224, "google/flan-t5-xl", "zero-shot VQAv2 test-dev 63.0 (BLIP-2 Table 2)"),
    _lavis("blip2-flant5xxl", "blip2_pretrained_flant5xxl.pth", "Blip2ForGeneration", "stage 2", 224, "google/flan-t5-xxl", "zero-shot VQAv2 test-dev 65.0 (BLIP-2 Table 2)"),
    _lavis("blip2-caption-opt2.7b", "blip2_caption_opt2.7b.pth", "Blip2ForGeneration", "captioning (COCO)", 364, "facebook/opt-2.7b", "NoCaps val CIDEr 119.7 (BLIP-2 Table 3)"),
    _lavis("blip2-caption-opt6.7b", "blip2_caption_opt6.7b.pth", "Blip2ForGeneration", "captioning (COCO)", 364, "facebook/opt-6.7b", "NoCaps val CIDEr 121.0 (BLIP-2 Table 3)"),
    _lavis("blip2-caption-flant5xl", "blip2_caption_flant5xl.pth", "Blip2ForGeneration", "captioning (COCO)", 364, "google/flan-t5-xl", "NoCaps val CIDEr 121.6 (BLIP-2 Table 3)"),
    # transformers hub conversions of the same checkpoints
    _hub("Salesforce/blip-image-captioning-base", "BlipModel", "captioning (COCO)", {"vit": "base", "image_size": 384}, _CAP_B),
    _hub("Salesforce/blip-image-captioning-large", "BlipModel", "captioning (COCO)", {"vit": "large", "image_size": 384}, _CAP_L),
    _hub("Salesforce/blip-itm-base-coco", "BlipModel", "retrieval (COCO)", {"vit": "base", "image_size": 384}, _COCO_B),
    _hub("Salesforce/blip-itm-large-coco", "BlipModel", "retrieval (COCO)", {"vit": "large", "image_size": 384}, _COCO_L),
    _hub("Salesforce/blip-itm-base-flickr", "BlipModel", "retrieval (Flickr30k)", {"vit": "base", "image_size": 384}, _FLICKR_B),
    _hub("Salesforce/blip-itm-large-flickr", "BlipModel", "retrieval (Flickr30k)", {"vit": "large", "image_size": 384}, _FLICKR_L),
    _hub("Salesforce/blip-vqa-base", "BlipVQA", "VQA (VQAv2 + VG)", {"vit": "base", "image_size": 480}, _VQA_B),
    _hub("Salesforce/blip-vqa-capfilt-large", "BlipVQA", "VQA (VQAv2 + VG)", {"vit": "base", "image_size": 480}, _VQA_CAPFILT),
    _hub("Salesforce/blip2-itm-vit-g", "Blip2Model", "stage 1 (ViT-g)", {"vit": "eva_vit_g", "image_size": 224}, None),
    _hub("Salesforce/blip2-opt-2.7b", "Blip2ForGeneration", "stage 2", {"llm": "facebook/opt-2.7b"}, "zero-shot VQAv2 test-dev 52.3 (BLIP-2 Table 2)"),
    _hub("Salesforce/blip2-opt-6.7b", "Blip2ForGeneration", "stage 2", {"llm": "facebook/opt-6.7b"}, "zero-shot VQAv2 test-dev 52.6 (BLIP-2 Table 2)"),
    _hub("Salesforce/blip2-flan-t5-xl", "Blip2ForGeneration", "stage 2", {"llm": "google/flan-t5-xl"}, "zero-shot VQAv2 test-dev 63.0 (BLIP-2 Table 2)"),
    _hub("Salesforce/blip2-flan-t5-xxl", "Blip2ForGeneration", "stage 2", {"llm": "google/flan-t5-xxl"}, "zero-shot VQAv2 test-dev 65.0 (BLIP-2 Table 2)"),
    _hub("Salesforce/blip2-opt-2.7b-coco", "Blip2ForGeneration", "captioning (COCO)", {"llm": "facebook/opt-2.7b", "image_size": 364}, "NoCaps val CIDEr 119.7 (BLIP-2 Table 3)"),
    _hub("Salesforce/blip2-opt-6.7b-coco", "Blip2ForGeneration", "captioning (COCO)", {"llm": "facebook/opt-6.7b", "image_size": 364}, "NoCaps val CIDEr 121.0 (BLIP-2 Table 3)"),
    _hub("Salesforce/blip2-flan-t5-xl-coco", "Blip2ForGeneration", "captioning (COCO)", {"llm": "google/flan-t5-xl", "image_size": 364}, "NoCaps val CIDEr 121.6 (BLIP-2 Table 3)"),
    # pretrained parts the recipes start from
    Pretrained("vit-b16-deit", "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth", "timm", "", "BLIP ViT-B/16 initialisation (DeiT-B, as salesforce/BLIP)", {"model_name": "vit_base_patch16_224"}, sha256="b5f2ef4d"),
    Pretrained("vit-l16-augreg", "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/jx_vit_large_p16_224-4ee7a4dc.pth", "timm", "", "BLIP ViT-L/16 initialisation (as salesforce/BLIP)", {"model_name": "vit_large_patch16_224"}, sha256="4ee7a4dc"),
    Pretrained("eva-vit-g", LAVIS_URL + "eva_vit_g.pth", "eva-vit-g", "", "BLIP-2 frozen image encoder (EVA-CLIP ViT-g/14, as LAVIS)", {"model_name": "eva_giant_patch14_224"}),
    Pretrained("clip-vit-l14", "timm/vit_large_patch14_clip_224.openai", "timm", "", "BLIP-2 frozen image encoder (OpenAI CLIP ViT-L/14)", {"model_name": "vit_large_patch14_clip_quickgelu_224"}),
    Pretrained("bert-base-uncased", "google-bert/bert-base-uncased", "hf-bert", "", "BLIP text encoder and BLIP-2 Q-Former initialisation"),
    Pretrained("opt-2.7b", "facebook/opt-2.7b", "hf-llm", "", "BLIP-2 frozen LLM"),
    Pretrained("opt-6.7b", "facebook/opt-6.7b", "hf-llm", "", "BLIP-2 frozen LLM"),
    Pretrained("flan-t5-xl", "google/flan-t5-xl", "hf-llm", "", "BLIP-2 frozen LLM"),
    Pretrained("flan-t5-xxl", "google/flan-t5-xxl", "hf-llm", "", "BLIP-2 frozen LLM"),
)  # fmt: skip


def list_pretrained(contains: str | None = None) -> list[Pretrained]:
    """The registry's entries (those whose name, model, task or format contain ``contains``)."""
    if contains is None:
        return list(REGISTRY)
    needle = contains.lower()
    return [p for p in REGISTRY if any(needle in s.lower() for s in (p.name, p.model, p.task, p.format))]


def get_pretrained(name: str) -> Pretrained:
    """The entry called ``name``.

    Raises:
        KeyError: no such entry (the closest names suggested).
    """
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    close = difflib.get_close_matches(name, [p.name for p in REGISTRY], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"no released checkpoint is called {name!r}{hint} (lightning_blip list-pretrained)")


def is_registered(name: str) -> bool:
    return any(entry.name == name for entry in REGISTRY)
