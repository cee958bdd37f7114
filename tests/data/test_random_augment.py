import json
import math
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lightning_blip.data.datamodule import ImageTextDataModule
from lightning_blip.data.transforms import RandomAugment, augment_op, train_transform

BLIP_OPS = (
    "Identity",
    "AutoContrast",
    "Brightness",
    "Sharpness",
    "Equalize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)


def _noise(size: tuple[int, int] = (30, 20)) -> Image.Image:
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_the_ops_are_blips_and_train_transform_uses_2_at_magnitude_5() -> None:
    assert RandomAugment().ops == BLIP_OPS
    steps = [s for s in train_transform(16, randaugment=True).transforms if isinstance(s, RandomAugment)]
    assert [(s.num_ops, s.magnitude, s.ops) for s in steps] == [(2, 5, BLIP_OPS)]
    with pytest.raises(ValueError, match="Solarise"):
        RandomAugment(ops=["Rotate", "Solarise"])


@pytest.mark.parametrize("sign", [1, -1])
def test_translate_moves_5_pixels_and_fills_grey(sign: int) -> None:
    image = _noise()
    pixels = np.asarray(image)
    x = np.asarray(augment_op(image, "TranslateX", 5, sign))
    y = np.asarray(augment_op(image, "TranslateY", 5, sign))
    if sign == 1:  # right / down
        assert (x[:, 5:] == pixels[:, :-5]).all() and (x[:, :5] == 128).all()
        assert (y[5:] == pixels[:-5]).all() and (y[:5] == 128).all()
    else:
        assert (x[:, :-5] == pixels[:, 5:]).all() and (x[:, -5:] == 128).all()
        assert (y[:-5] == pixels[5:]).all() and (y[-5:] == 128).all()


def test_shear_is_0_15_about_the_top_left_corner() -> None:
    vertical, horizontal = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    vertical[:, 10], horizontal[10, :] = 255, 255
    sheared_x = np.asarray(augment_op(Image.fromarray(vertical), "ShearX", 5))[..., 0]
    sheared_y = np.asarray(augment_op(Image.fromarray(horizontal), "ShearY", 5))[..., 0]
    for t in (0, 20, 40, 60):  # pixel centres: 10.5 + 0.15 * (t + 0.5)
        expected = math.floor(10.5 + 0.15 * (t + 0.5))
        assert sheared_x[t].argmax() == expected  # x' = x + 0.15 y
        assert sheared_y[:, t].argmax() == expected  # y' = y + 0.15 x
    negative = np.asarray(augment_op(Image.fromarray(vertical), "ShearX", 5, -1))[..., 0]
    assert negative[0].argmax() == 10 and negative[40].argmax() == 4
    assert (np.asarray(augment_op(_noise(), "ShearX", 5))[-1, :3] == 128).all()  # grey fill


@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_turns_15_degrees_counter_clockwise_about_the_centre(sign: int) -> None:
    pixels = np.zeros((64, 64), np.uint8)
    pixels[31:33, 51:53] = 255  # a blob 20 px right of the centre (32, 32)
    rotated = np.asarray(augment_op(Image.fromarray(pixels).convert("RGB"), "Rotate", 5, sign))
    assert (rotated[0, 0] == 128).all()  # grey fill in the corners
    blob = np.where(rotated[..., 0] == 128, 0, rotated[..., 0]).astype(float)
    ys, xs = np.nonzero(blob)
    weights = blob[ys, xs]
    angle = math.radians(15 * sign)  # counter-clockwise on screen: y grows downwards
    expected = (32 + 20 * math.cos(angle) - 0.5, 32 - 20 * math.sin(angle) - 0.5)
    centroid = ((xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum())
    assert centroid == pytest.approx(expected, abs=0.1)


def test_brightness_and_sharpness_do_nothing_at_magnitude_5_and_scale_by_1_9_at_10() -> None:
    image = _noise()
    for name in ("Brightness", "Sharpness"):
        assert np.array_equal(np.asarray(augment_op(image, name, 5)), np.asarray(image))
    grey = Image.new("RGB", (4, 4), (100, 50, 10))
    assert np.asarray(augment_op(grey, "Brightness", 10))[0, 0].tolist() == [190, 95, 19]


def test_autocontrast_equalize_and_identity() -> None:
    image = _noise().point(lambda v: 60 + v // 3)  # a low-contrast image
    assert np.array_equal(
        np.asarray(augment_op(image, "AutoContrast", 5)), np.asarray(ImageOps.autocontrast(image))
    )
    assert np.array_equal(np.asarray(augment_op(image, "Equalize", 5)), np.asarray(ImageOps.equalize(image)))
    assert augment_op(image, "Identity", 5) is image


def test_half_the_drawn_ops_are_skipped_and_draws_are_uniform_with_replacement() -> None:
    augment = RandomAugment()
    applied: list[list[tuple[str, int]]] = []
    for seed in range(4000):
        torch.manual_seed(seed)
        applied.append(augment.sample())
    counts = Counter(len(ops) for ops in applied)  # 0, 1 or 2 of the 2 drawn ops applied
    assert set(counts) == {0, 1, 2}
    assert sum(n * k for n, k in counts.items()) / len(applied) == pytest.approx(1.0, abs=0.06)
    names = Counter(name for ops in applied for name, _ in ops)
    assert set(names) == set(BLIP_OPS)
    assert all(count / names.total() == pytest.approx(0.1, abs=0.025) for count in names.values())
    assert any(len(ops) == 2 and ops[0][0] == ops[1][0] for ops in applied)  # with replacement
    signs = [sign for ops in applied for name, sign in ops if name in ("Rotate", "TranslateX")]
    assert signs.count(-1) / len(signs) == pytest.approx(0.5, abs=0.07)
    assert {sign for ops in applied for name, sign in ops if name in ("Identity", "Equalize")} == {1}


def test_the_same_torch_seed_gives_the_same_output_whatever_random_and_numpy_say() -> None:
    transform, image = train_transform(16, randaugment=True), _noise((40, 40))
    outputs = []
    for other in (1, 2):
        random.seed(other)
        np.random.seed(other)
        torch.manual_seed(7)
        outputs.append(transform(image))
    assert torch.equal(outputs[0], outputs[1])
    augment = RandomAugment()
    results = set()
    for seed in range(20):
        torch.manual_seed(seed)
        results.add(np.asarray(augment(image)).tobytes())
    assert len(results) > 5


def test_the_transform_pickles_for_spawned_workers() -> None:
    transform = pickle.loads(pickle.dumps(train_transform(16, randaugment=True)))
    torch.manual_seed(0)
    copy = transform(_noise())
    torch.manual_seed(0)
    assert torch.equal(copy, train_transform(16, randaugment=True)(_noise()))


def test_the_datamodule_trains_with_blips_random_augment(tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.png")
    (tmp_path / "train.json").write_text(json.dumps([{"image": "a.png", "caption": "a picture"}]))
    for randaugment, expected in ((True, 1), (False, 0)):
        dm = ImageTextDataModule(
            str(tmp_path / "train.json"), image_root=str(tmp_path), image_size=16, randaugment=randaugment
        )
        dm.setup("fit")
        steps = dm.datasets["train"].transform.transforms
        assert sum(isinstance(step, RandomAugment) for step in steps) == expected
        assert not any(type(step).__name__ == "RandAugment" for step in steps)
