"""Image transforms of BLIP pretraining and evaluation (PIL image in, normalised ``(3, S, S)`` tensor out)."""

from __future__ import annotations

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# The CLIP normalisation constants, which BLIP and BLIP-2 use as well.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


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


def train_transform(
    image_size: int, scale: tuple[float, float] = (0.5, 1.0), randaugment: bool = False
) -> T.Compose:
    """Random resized crop (bicubic), horizontal flip, optional RandAugment(2, 5), normalise.

    Every random choice draws from torch's global generator, so seeding torch fixes the output.
    """
    steps = [
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(image_size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
    ]
    if randaugment:
        steps.append(T.RandAugment(num_ops=2, magnitude=5))
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
