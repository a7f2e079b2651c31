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


# PIL filters by name, for a soft map resized with the image (``ClsConfig.saliency_resize``).
MASK_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize(
    image: Array, mask: Array | None, size: tuple[int, int], mask_filter: str = "nearest"
) -> tuple[Array, Array | None]:
    """Resizes to (height, width); ``mask`` with ``mask_filter`` (labels: nearest)."""
    h, w = size
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize((w, h), MASK_FILTERS[mask_filter]))
    return image, mask


def random_resize_long(
    image: Array,
    mask: Array | None,
    low: int,
    high: int,
    rng: np.random.Generator,
    mask_filter: str = "nearest",
) -> tuple[Array, Array | None]:
    """Resizes so that the long side is uniform in [low, high] (PSA ``RandomResizeLong``)."""
    target = int(rng.integers(low, high + 1))
    h, w = image.shape[:2]
    s = target / max(h, w)
    return resize(image, mask, (max(1, round(h * s)), max(1, round(w * s))), mask_filter)


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


def color_jitter(
    image: Array, strength: float, rng: np.random.Generator, hue: float = 0.0
) -> Array:
    """Random brightness, contrast and saturation, each a factor in [1 - s, 1 + s], then (when
    ``hue`` > 0) a hue shift by a fraction of the colour circle in [-hue, hue] (torchvision
    ``ColorJitter(s, s, s, hue)``, its order fixed). uint8 [H, W, 3] -> uint8 [H, W, 3].

    The random draws of ``hue`` come after the other three, so ``hue = 0`` consumes the same
    numbers as before the option existed.
    """
    if strength <= 0 and hue <= 0:
        return image
    x = image.astype(np.float32)
    if strength > 0:
        b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
        x = x * b
        x = (x - x.mean()) * c + x.mean()
        grey = x.mean(axis=2, keepdims=True)
        x = (x - grey) * s + grey
    if hue > 0:
        x = np.rint(shift_hue(np.clip(x, 0, 255) / 255.0, rng.uniform(-hue, hue)) * 255.0)
    return np.clip(x, 0, 255).astype(np.uint8)


def shift_hue(rgb: Array, shift: float) -> Array:
    """Rotates the hue of float RGB [H, W, 3] in [0, 1] by ``shift`` turns (HSV, as
    torchvision's ``adjust_hue``); saturation and value are kept."""
    top, low = rgb.max(axis=2), rgb.min(axis=2)
    chroma = top - low
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = (rgb[..., i] for i in range(3))
    other = np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    h = np.where(top == r, ((g - b) / safe) % 6.0, other)
    h = np.where(chroma > 0, h / 6.0, 0.0)
    h = (h + shift) % 1.0
    # HSV -> RGB with v = top and s * v = chroma
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    weight = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return top[..., None] - chroma[..., None] * weight
