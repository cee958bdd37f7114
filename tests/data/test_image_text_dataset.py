import io
import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_blip.data.annotations import ImageTextRecord
from lightning_blip.data.collate import ImageTextCollator
from lightning_blip.data.dataset import ImageTextDataset
from lightning_blip.data.transforms import MEAN, STD, eval_transform, train_transform
from lightning_blip.models.shared.tokenizer import build_tokenizer


def _noise_image(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    generator = torch.Generator().manual_seed(size[0] * 7 + len(mode))
    channels = len(mode)
    pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.squeeze(-1).numpy(), mode)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    _noise_image().save(tmp_path / "rgb.png")
    _noise_image("L", (24, 36)).save(tmp_path / "gray.png")
    _noise_image("RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg" * 10)
    buffer = io.BytesIO()
    _noise_image(size=(64, 64)).save(buffer, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return tmp_path


RECORDS = [
    ImageTextRecord("rgb.png", ("A Red. Thing!", "second caption"), "img-a"),
    ImageTextRecord("gray.png", ("gray",), "img-b"),
    ImageTextRecord("corrupt.jpg", ("corrupt",), "img-c"),
    ImageTextRecord("truncated.png", ("truncated",), "img-d"),
    ImageTextRecord("missing.png", ("missing",), "img-e"),
    ImageTextRecord("rgba.png", ("same image id as rgb",), "img-a"),
]


def test_items_are_caption_pairs_with_dense_image_ids(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, eval_transform(16), max_words=2)
    assert len(dataset) == 7
    assert dataset.image_ids == [0, 0, 1, 2, 3, 4, 0]
    assert dataset.num_images == 5
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert (item["caption"], item["image_id"], item["index"]) == ("a red", 0, 0)
    assert dataset[1]["caption"] == "second caption"
    assert dataset[2]["image"].shape == (3, 16, 16)  # grayscale converted to RGB
    assert dataset[6]["image"].shape == (3, 16, 16)  # RGBA converted to RGB


def test_eval_transform_normalises_with_the_clip_constants(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (255, 0, 128)).save(tmp_path / "flat.png")
    image = eval_transform(4)(Image.open(tmp_path / "flat.png"))
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), MEAN, STD)]
    assert torch.allclose(image[:, 0, 0], torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("name", ["corrupt.jpg", "truncated.png", "missing.png"])
def test_unreadable_image_gives_none_and_one_warning(
    image_root: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, eval_transform(16))
    index = next(i for i, (r, _) in enumerate(dataset.pairs) if RECORDS[r].image == name)
    with caplog.at_level(logging.WARNING):
        assert dataset[index] is None
    assert len(caplog.records) == 1 and name in caplog.records[0].getMessage()
    assert dataset.num_skipped == 1


def test_skipped_items_are_counted_by_the_collator(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, eval_transform(16))
    batch = ImageTextCollator(build_tokenizer())([dataset[i] for i in range(len(dataset))])
    assert batch["num_skipped"] == 3
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["index"].tolist() == [0, 1, 2, 6]
    assert batch["image_id"].tolist() == [0, 0, 1, 0]


def test_training_substitutes_a_random_readable_item_so_batches_keep_their_size(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, eval_transform(16), substitute_corrupt=True)
    readable = {
        i for i, (r, _) in enumerate(dataset.pairs) if RECORDS[r].image in ("rgb.png", "gray.png", "rgba.png")
    }
    for i in set(range(len(dataset))) - readable:  # corrupt, truncated, missing
        item = dataset[(i, 7)]
        assert item["num_skipped"] == 1 and item["index"] in readable
        assert dataset[(i, 7)]["index"] == item["index"]  # the same index and seed: the same substitute
    batch = ImageTextCollator(build_tokenizer())([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape[0] == len(dataset)
    assert batch["num_skipped"] == 3  # each unreadable sample once, not once per failed read


def test_a_run_of_unreadable_images_longer_than_the_substitutions_is_escaped(tmp_path: Path) -> None:
    # 40 missing files in a row, then 8 readable ones: neighbours would not do, random draws do
    _noise_image().save(tmp_path / "ok.png")
    records = [ImageTextRecord(f"gone{i}.png", ("x",), str(i)) for i in range(40)]
    records += [ImageTextRecord("ok.png", ("y",), f"ok{i}") for i in range(8)]
    dataset = ImageTextDataset(
        records, tmp_path, eval_transform(8), substitute_corrupt=True, max_substitutions=64
    )
    assert all(dataset[i]["caption"] == "y" for i in range(40))


def test_nothing_readable_or_no_image_root_fails_naming_image_root(image_root: Path) -> None:
    blank = ImageTextDataset(RECORDS[2:5], image_root, eval_transform(16), substitute_corrupt=True)
    with pytest.raises(RuntimeError, match=f"image_root={image_root}"):
        blank[0]
    wrong = ImageTextDataset(RECORDS, image_root / "nope", eval_transform(16))
    with pytest.raises(FileNotFoundError, match="image_root .*nope is not a folder"):
        wrong[0]


def test_seeded_augmentation_depends_only_on_index_and_seed(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, train_transform(16, scale=(0.2, 1.0), randaugment=True))
    first = dataset[(0, 123)]["image"]
    torch.manual_seed(999)  # the global state must not matter
    random.seed(999)
    assert torch.equal(dataset[(0, 123)]["image"], first)
    assert not torch.equal(dataset[(0, 124)]["image"], first)


def test_seeded_augmentation_leaves_global_generators_untouched(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, train_transform(16, randaugment=True))
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    dataset[(0, 5)]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    dataset[0]  # unseeded: draws from the global generator
    assert not torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_augmentation_leaves_cuda_generators_untouched(image_root: Path) -> None:
    dataset = ImageTextDataset(RECORDS, image_root, train_transform(16))
    torch.cuda.init()
    cuda_state = torch.cuda.get_rng_state()
    dataset[(0, 5)]
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    mid_grey = eval_transform(4)(Image.new("L", (8, 8), 128))
    sixteen = tmp_path / "grey16.png"
    Image.new("I;16", (8, 8), 32896).save(sixteen)  # 128 * 257
    with Image.open(sixteen) as image:
        assert image.mode.startswith("I")
        assert torch.allclose(eval_transform(4)(image), mid_grey, atol=1e-6)
    for value in (128 / 255, 128.0):  # float in [0, 1], and float in [0, 255]
        image = Image.new("F", (8, 8), value)
        assert torch.allclose(eval_transform(4)(image), mid_grey, atol=1e-6)
