"""Training augmentations on numpy arrays (image uint8 [H, W, 3], mask uint8 [H, W] or None).

Each takes a ``numpy.random.Generator``; images are resized bilinearly, masks by nearest
neighbour, and crops pad the image with the ImageNet mean colour (zero after normalisation)
and the mask with 255 (ignored).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from wsss.constants import IGNORE_INDEX, IMAGENET_MEAN

Array = np.ndarray


def resize(image: Array, mask: Array | None, size: tuple[int, int]) -> tuple[Array, Array | None]:
    """Resizes to (height, width)."""
    h, w = size
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return image, mask


def random_resize_long(
    image: Array, mask: Array | None, low: int, high: int, rng: np.random.Generator
) -> tuple[Array, Array | None]:
    """Resizes so that the long side is uniform in [low, high] (PSA ``RandomResizeLong``)."""
    target = int(rng.integers(low, high + 1))
    h, w = image.shape[:2]
    s = target / max(h, w)
    return resize(image, mask, (max(1, round(h * s)), max(1, round(w * s))))


def random_scale(
    image: Array, mask: Array | None, low: float, high: float, rng: np.random.Generator
) -> tuple[Array, Array | None]:
    """Rescales by a factor uniform in [low, high] (DeepLab training)."""
    s = float(rng.uniform(low, high))
    h, w = image.shape[:2]
    return resize(image, mask, (max(1, round(h * s)), max(1, round(w * s))))


def random_crop(
    image: Array, mask: Array | None, size: int, rng: np.random.Generator
) -> tuple[Array, Array | None]:
    """A size x size crop; images smaller than that are padded at a random offset."""
    h, w = image.shape[:2]
    ph, pw = max(size, h), max(size, w)
    canvas = np.empty((ph, pw, 3), dtype=np.uint8)
    canvas[:] = np.round(IMAGENET_MEAN).astype(np.uint8)
    oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    canvas[oy : oy + h, ox : ox + w] = image
    y, x = int(rng.integers(0, ph - size + 1)), int(rng.integers(0, pw - size + 1))
    image = canvas[y : y + size, x : x + size]
    if mask is not None:
        padded = np.full((ph, pw), IGNORE_INDEX, dtype=np.uint8)
        padded[oy : oy + h, ox : ox + w] = mask
        mask = padded[y : y + size, x : x + size]
    return image, mask


def random_hflip(
    image: Array, mask: Array | None, rng: np.random.Generator
) -> tuple[Array, Array | None]:
    if rng.random() < 0.5:
        image = image[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    return image, mask


def color_jitter(image: Array, strength: float, rng: np.random.Generator) -> Array:
    """Random brightness, contrast and saturation, each a factor in [1 - s, 1 + s]."""
    if strength <= 0:
        return image
    x = image.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255).astype(np.uint8)
