"""The processor files of an export: transformers' own ``BlipProcessor`` / ``Blip2Processor`` + model,
fed PIL images, give our preprocessing and our generations.

Each side preprocesses the same PIL images its own way (transformers' processor; our
``eval_transform``) and generates with its own code; captions, answers and ids are compared.
"""

from __future__ import annotations

import easy_vqa
import numpy as np
import pytest
import torch
from conftest import convert_ours_to_transformers, tiny_blip
from PIL import Image
from test_blip2_weights_parity import SEEDS, hf_config
from test_blip2_weights_parity import randomise as randomise_blip2
from test_blip_transformers_parity import randomise
from test_blip_vqa_transformers import hf_vqa_config, our_vqa

from lightning_blip.convert.export_blip import export_transformers_blip
from lightning_blip.convert.export_blip2 import export_blip2_to_transformers
from lightning_blip.convert.ours_blip2 import convert_transformers_blip2, load_converted_blip2
from lightning_blip.data.transforms import eval_transform
from lightning_blip.models.blip import BlipModel
from lightning_blip.models.blip2.small_llm import DEFAULT_TEXTS, tokenizer_for, train_word_tokenizer
from lightning_blip.weights.transformers_blip_vqa import load_transformers_blip_vqa

transformers = pytest.importorskip("transformers")

SIZE = 32  # the tiny models' image size
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# transformers resizes uint8 tensors with torchvision, we PIL images: both bicubic with antialiasing,
# rounded differently, so a pixel may differ by one grey level (1/255 before normalising)
ONE_LEVEL = 1 / 255 / min(CLIP_STD) + 1e-6
PROMPT = "a picture of "

pytestmark = pytest.mark.usefixtures("one_thread")


def pil_images() -> list[Image.Image]:
    """Five easy_vqa pictures (64 x 64 shapes) and a 45 x 70 colour gradient (non-square, not RGBA)."""
    paths = [easy_vqa.get_test_image_paths()[i] for i in (0, 1, 2, 3, 4)]
    y, x = np.mgrid[0:45, 0:70]
    gradient = np.stack([x * 3, y * 5, (x + y) * 2], -1).astype(np.uint8)
    return [Image.open(p).convert("RGB") for p in paths] + [Image.fromarray(gradient)]


def our_pixels(images: list[Image.Image], size: int = SIZE) -> torch.Tensor:
    return torch.stack([eval_transform(size)(image) for image in images])


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """Our random captioner, its export, and transformers' processor and model read from it."""
    torch.manual_seed(5)
    ours = randomise(BlipModel(tiny_blip()))
    out = export_transformers_blip(ours, tmp_path_factory.mktemp("caption"), "captioning")
    processor = transformers.BlipProcessor.from_pretrained(out)
    return ours, processor, transformers.BlipForConditionalGeneration.from_pretrained(out).eval()


def test_blip_processor_has_our_image_settings_and_special_tokens(blip):
    processor = blip[1]
    image = processor.image_processor
    assert image.size == {"height": SIZE, "width": SIZE} and image.do_resize and image.do_normalize
    assert image.resample == Image.Resampling.BICUBIC and not getattr(image, "do_center_crop", False)
    assert tuple(image.image_mean) == CLIP_MEAN and tuple(image.image_std) == CLIP_STD
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tokenizer.bos_token_id == 30522 and tokenizer.sep_token_id == 102
    ids = processor(text=PROMPT).input_ids
    assert ids == [101, 1037, 3861, 1997, 102]  # [CLS] a picture of [SEP]: generate puts [DEC] first


def test_blip_pixels_agree_within_one_grey_level(blip):
    """A wrong size, mean, std or interpolation (bilinear: 25 levels here) fails."""
    images = pil_images()
    got = blip[1](images=images, return_tensors="pt").pixel_values
    expected = our_pixels(images)
    assert got.shape == expected.shape == (6, 3, SIZE, SIZE)
    diff = (got - expected).abs()
    assert diff.max() <= ONE_LEVEL
    assert (diff > 1e-5).float().mean() < 0.01  # all but a few pixels equal up to fp32 rounding


@pytest.mark.parametrize("num_beams", [1, 3])
def test_blip_captions_from_transformers_processor_and_model_are_ours(blip, num_beams):
    """``model.generate(**processor(images, text=prompt))`` with BLIP's max/min length gives our
    captions (length penalty 0: transformers 5 normalises beam scores by another length)."""
    ours, processor, hf = blip
    images = pil_images()
    settings = {"num_beams": num_beams, "max_length": 20, "min_length": 5, "length_penalty": 0.0}
    inputs = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt")
    got = processor.batch_decode(hf.generate(**inputs, do_sample=False, **settings), skip_special_tokens=True)
    expected = ours.generate(our_pixels(images), prompt=PROMPT, **settings)
    assert [g.removeprefix(PROMPT.strip()).strip() for g in got] == expected
    assert len(set(expected)) > 2  # the captions depend on the image


def test_vqa_export_tokenizer_starts_questions_with_enc_and_answers_are_ours(tmp_path):
    """BLIP's VQA encodes the question [ENC]-first; transformers uses the processor's ids as given."""
    torch.manual_seed(4)
    source = tmp_path / "source"
    randomise(transformers.BlipForQuestionAnswering(hf_vqa_config())).save_pretrained(source)
    ours = our_vqa()
    load_transformers_blip_vqa(ours, source)
    export_transformers_blip(ours, tmp_path / "vqa")
    processor = transformers.BlipProcessor.from_pretrained(tmp_path / "vqa")
    hf = transformers.BlipForQuestionAnswering.from_pretrained(tmp_path / "vqa").eval()
    images = pil_images()[:4]
    questions = ["what shape is it?", "what color is the shape?", "is there a circle?", "is it red?"]
    got = []
    for image, question in zip(images, questions):  # one at a time: transformers ignores question padding
        inputs = processor(images=image, text=question, return_tensors="pt")
        assert inputs.input_ids[0, 0] == ours.config.enc_token_id
        ids = hf.generate(**inputs, num_beams=1, max_length=10, min_length=1)
        got += processor.batch_decode(ids, skip_special_tokens=True)
    expected = ours.answer(our_pixels(images), questions, num_beams=1, max_length=10, min_length=1)
    assert [g.strip() for g in got] == expected
    assert len(set(expected)) > 1


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """Our tiny OPT BLIP-2 (converted from a random transformers one), exported, read back."""
    torch.manual_seed(SEEDS["opt"])
    tokenizer = tokenizer_for("opt", train_word_tokenizer(DEFAULT_TEXTS))
    source = tmp_path_factory.mktemp("blip2_source")
    randomise_blip2(transformers.Blip2ForConditionalGeneration(hf_config("opt", tokenizer))).save_pretrained(
        source
    )
    tokenizer.save_pretrained(source)
    converted = convert_transformers_blip2(source, tmp_path_factory.mktemp("blip2_ours"))
    ours = load_converted_blip2(converted)
    out = export_blip2_to_transformers(ours, tmp_path_factory.mktemp("blip2_hf"))
    processor = transformers.Blip2Processor.from_pretrained(out)
    return ours, processor, transformers.Blip2ForConditionalGeneration.from_pretrained(out).eval(), converted


@pytest.mark.parametrize("num_beams", [1, 3])
def test_blip2_processor_and_model_generate_our_text(blip2, num_beams):
    ours, processor, hf, _ = blip2
    images = pil_images()
    assert processor.num_query_tokens == ours.config.qformer.num_query_tokens == 4
    assert processor.image_processor.size == {"height": SIZE, "width": SIZE}
    inputs = processor(images=images, text=["a photo of"] * len(images), return_tensors="pt")
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_token == hf.config.image_token_index
    assert (inputs.input_ids[:, :4] == image_token).all() and (inputs.input_ids[:, 4:] != image_token).all()
    assert (inputs.pixel_values - our_pixels(images)).abs().max() <= ONE_LEVEL
    settings = {"num_beams": num_beams, "max_new_tokens": 6, "min_new_tokens": 2, "length_penalty": 1.0}
    ids = hf.generate(**inputs, eos_token_id=ours._eos_ids, do_sample=False, **settings)
    got = processor.batch_decode(ids[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    expected = ours.generate(our_pixels(images), prompt="a photo of", **settings)
    assert [g.split("\n", 1)[0].strip() for g in got] == expected  # LAVIS stops OPT at a newline
    assert len(set(expected)) > 1


def same_inputs(processor, again, text: str) -> bool:
    images = pil_images()[:2]
    a, b = (
        processor(images=images, text=text, return_tensors="pt"),
        again(images=images, text=text, return_tensors="pt"),
    )
    return torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.input_ids, b.input_ids)


def test_convert_command_writes_the_processors(blip, blip2, tmp_path):
    """``convert [--model blip2] --from ours --to transformers``: the processors of the direct exports."""
    ours, processor, _ = blip
    convert_ours_to_transformers(ours, tmp_path, "captioning")
    again = transformers.BlipProcessor.from_pretrained(tmp_path / "hf")
    images = pil_images()[:2]
    a, b = (
        again(images=images, text=PROMPT, return_tensors="pt"),
        processor(images=images, text=PROMPT, return_tensors="pt"),
    )
    assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.input_ids, b.input_ids)


def test_export_refuses_a_config_whose_special_ids_are_not_the_tokenizers(tmp_path):
    model = BlipModel(tiny_blip(bos_token_id=7))
    with pytest.raises(ValueError, match=r"bos_token_id': \(30522, 7\)"):
        export_transformers_blip(model, tmp_path / "hf", "captioning")
    assert not (tmp_path / "hf").exists()
