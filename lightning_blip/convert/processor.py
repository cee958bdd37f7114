"""The preprocessing of an exported model as transformers' own processor files, so that
``BlipProcessor.from_pretrained(dir)`` / ``Blip2Processor.from_pretrained(dir)`` give our inputs.

- Images: transformers' ``BlipImageProcessor`` set to our evaluation transform
  (:func:`~lightning_blip.data.transforms.eval_transform`): resize to the model's square image size,
  bicubic, no crop, CLIP mean/std. transformers resizes with torchvision on tensors, we with PIL; on
  natural images the two differ by at most one grey level on a few pixels (rounding), on pixel noise
  by up to a few levels (the two round the intermediate pass of the separable resize differently).
- BLIP text: our tokenizer (bert-base-uncased, ``[DEC]`` as bos, ``[ENC]``) with its ids checked
  against the model's config. transformers' captioner replaces the first id by ``bos_token_id``
  ([DEC]) itself; its ``BlipForQuestionAnswering`` encodes the question with the ids as given, where
  BLIP (and ours) put [ENC] first, so a VQA export's tokenizer starts every text with [ENC].
- BLIP-2 text: the LLM's tokenizer (``<image>`` at ``image_token_index``) and ``num_query_tokens``,
  so the processor writes as many ``<image>`` tokens as transformers' model scatters queries into.
"""

from __future__ import annotations

from transformers import BertTokenizer, Blip2Processor, BlipImageProcessor, BlipProcessor
from transformers.image_utils import PILImageResampling

from lightning_blip.models.blip import BlipConfig
from lightning_blip.models.shared.tokenizer import ENC_TOKEN, build_tokenizer
from lightning_blip.models.shared.vision import MEAN, STD


def image_processor(image_size: int) -> BlipImageProcessor:
    """transformers' image processor doing what ``eval_transform(image_size)`` does."""
    return BlipImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(MEAN),
        image_std=list(STD),
        do_convert_rgb=True,
    )


def blip_tokenizer(config: BlipConfig, vqa: bool = False) -> BertTokenizer:
    """Our BLIP tokenizer, checked against ``config``'s special ids; ``vqa``: [ENC] first instead of [CLS].

    Raises:
        ValueError: a special id of the tokenizer differs from the config's (both named), or the
            tokenizer has more ids than the model's vocabulary.
    """
    tokenizer = build_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "enc_token_id": tokenizer.enc_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    wrong = {k: (v, getattr(config, k)) for k, v in ids.items() if v != getattr(config, k)}
    if wrong:
        raise ValueError(
            f"the bundled tokenizer's ids differ from the model config's (tokenizer, config): {wrong}"
        )
    if len(tokenizer) > config.text.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} ids, the model's text.vocab_size is {config.text.vocab_size}"
        )
    if vqa:  # the saved tokenizer's template takes it: it is rebuilt from cls_token on load
        tokenizer.cls_token = ENC_TOKEN
    return tokenizer


def blip_processor(config: BlipConfig, vqa: bool = False) -> BlipProcessor:
    """The ``BlipProcessor`` (image processor + tokenizer) of a model of ``config``; ``save_pretrained``
    writes its files."""
    return BlipProcessor(image_processor(config.vision.image_size), blip_tokenizer(config, vqa))


def blip2_processor(tokenizer, image_size: int, num_query_tokens: int) -> Blip2Processor:
    """The ``Blip2Processor`` of a generation model: our image processor, the LLM's ``tokenizer``
    (holding ``<image>``) and ``num_query_tokens``."""
    return Blip2Processor(image_processor(image_size), tokenizer, num_query_tokens=num_query_tokens)
