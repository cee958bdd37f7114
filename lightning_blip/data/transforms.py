"""Image transforms of BLIP pretraining and evaluation (PIL image in, normalised ``(3, S, S)`` tensor out)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from lightning_blip.models.shared.vision import MEAN, STD


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's ``convert`` clips 16-bit and float grey to 255 instead of scaling it, so
    ``I;16*``/``I`` (16-bit range) are divided by 257 and ``F`` taken as [0, 1] (or [0, 255] if larger).

    A module-level function (not a lambda), so that the transform pickles into spawned workers.
    """
    if image.mode.startswith("I") or image.mode == "F":
        if image.mode == "F":
            scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        else:
            image, scale = image.convert("I"), 1 / 257
        image = image.point(lambda value: value * scale).convert("L")  # clips to [0, 255]
    return image.convert("RGB")


# BLIP's RandomAugment (salesforce/BLIP data/__init__.py): levels out of 10, grey fill
MAX_LEVEL = 10
FILL = 128


def _grey(image: Image.Image) -> tuple[int, ...]:
    return (FILL,) * len(image.getbands())


def _affine(image: Image.Image, inverse: tuple[float, ...]) -> Image.Image:
    """Bilinear affine warp with grey fill; ``inverse`` maps output to input pixels (PIL's convention)."""
    return image.transform(
        image.size, Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR, fillcolor=_grey(image)
    )


# name -> (image, level in [0, 1], sign) -> image; the sign is +1 or -1, used by the geometric ops only
_OPS: dict[str, Callable[[Image.Image, float, int], Image.Image]] = {
    "Identity": lambda image, level, sign: image,
    "AutoContrast": lambda image, level, sign: ImageOps.autocontrast(image),
    "Brightness": lambda image, level, sign: ImageEnhance.Brightness(image).enhance(level * 1.8 + 0.1),
    "Sharpness": lambda image, level, sign: ImageEnhance.Sharpness(image).enhance(level * 1.8 + 0.1),
    "Equalize": lambda image, level, sign: ImageOps.equalize(image),
    "ShearX": lambda image, level, sign: _affine(image, (1, -sign * level * 0.3, 0, 0, 1, 0)),
    "ShearY": lambda image, level, sign: _affine(image, (1, 0, 0, -sign * level * 0.3, 1, 0)),
    "TranslateX": lambda image, level, sign: _affine(image, (1, 0, -sign * level * 10, 0, 1, 0)),
    "TranslateY": lambda image, level, sign: _affine(image, (1, 0, 0, 0, 1, -sign * level * 10)),
    "Rotate": lambda image, level, sign: image.rotate(
        sign * level * 30, Image.Resampling.BILINEAR, fillcolor=_grey(image)
    ),
}
RANDOM_AUGMENT_OPS = tuple(_OPS)  # BLIP's list, in its order
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


def augment_op(image: Image.Image, name: str, magnitude: float, sign: int = 1) -> Image.Image:
    """One op of :class:`RandomAugment` at ``magnitude`` (0 to ``MAX_LEVEL``).

    Brightness and Sharpness enhance by ``m / 10 * 1.8 + 0.1`` (1, no change, at 5); ShearX/ShearY
    shear by ``sign * m / 10 * 0.3`` about the top-left corner (``x' = x + f y`` / ``y' = y + f x``);
    TranslateX/TranslateY move by ``sign * m`` pixels; Rotate turns ``sign * m / 10 * 30`` degrees
    counter-clockwise about the centre. Geometric ops are bilinear and fill with grey (128).
    """
    return _OPS[name](image, magnitude / MAX_LEVEL, sign)


class RandomAugment:
    """BLIP's ``RandomAugment(N, M)`` on PIL images (not torchvision's RandAugment).

    Draws ``num_ops`` ops from ``ops`` uniformly with replacement, then skips each with probability
    0.5 and applies the others with :func:`augment_op` at ``magnitude``, each geometric op with a random
    sign. Every draw comes from torch's global generator, so seeding torch fixes the output.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 5, ops: Sequence[str] = RANDOM_AUGMENT_OPS
    ) -> None:
        unknown = [name for name in ops if name not in _OPS]
        if unknown or not ops:
            raise ValueError(
                f"RandomAugment ops must be a non-empty subset of {sorted(_OPS)}, got {list(ops)}"
            )
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)

    def sample(self) -> list[tuple[str, int]]:
        """The ops to apply and their signs, in order (draws: the ops, then per op its skip and sign)."""
        chosen = []
        for op in torch.randint(len(self.ops), (self.num_ops,)).tolist():
            if torch.rand(()).item() < 0.5:
                continue
            name = self.ops[op]
            sign = -1 if name in SIGNED_OPS and torch.rand(()).item() < 0.5 else 1
            chosen.append((name, sign))
        return chosen

    def __call__(self, image: Image.Image) -> Image.Image:
        for name, sign in self.sample():
            image = augment_op(image, name, self.magnitude, sign)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, ops={self.ops})"


def train_transform(
    image_size: int, scale: tuple[float, float] = (0.5, 1.0), randaugment: bool = False
) -> T.Compose:
    """Random resized crop (bicubic), horizontal flip, optional BLIP's RandomAugment(2, 5), normalise.

    Every random choice draws from torch's global generator, so seeding torch fixes the output.
    """
    steps = [
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(image_size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
    ]
    if randaugment:
        steps.append(RandomAugment(2, 5))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def eval_transform(image_size: int) -> T.Compose:
    """Resize to ``image_size`` x ``image_size`` (bicubic, aspect ratio not kept), normalise."""
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
