"""Encoded image bytes -> RGB uint8, and RGB resizing for the network (numpy + Pillow only).

Used by the ``decode`` and ``preprocess`` Triton Python-backend models and by the tests'
in-process reference. Every rejected input raises :class:`ImageError` with a message that names
the problem, so the server answers that request with a clear error and keeps serving.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decoders allowed to touch request bytes (never Pillow's whole plugin list: EPS runs Ghostscript).
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
MAX_SIDE = 512  # longest side the networks see (see network_size)
MIN_SIDE = 32  # shortest side the networks see


class ImageError(ValueError):
    """A request image that cannot be used; the message says why."""


def _as_bytes(data: bytes | np.ndarray) -> bytes:
    if isinstance(data, np.ndarray):
        if data.dtype not in (np.uint8, np.int8) and data.dtype != np.object_:
            raise ImageError(f"image bytes must be a uint8 tensor, got {data.dtype}")
        if data.dtype == np.object_:
            return b"".join(bytes(x) for x in data.reshape(-1))
        return data.tobytes()
    return bytes(data)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 [H, W, 3]; 16-bit scaled, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or grey.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(grey * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy (pydensecrf)


def decode_image(
    data: bytes | np.ndarray, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Encoded JPEG/PNG/WebP/BMP/GIF bytes -> RGB uint8 [H, W, 3], upright per EXIF.

    Greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB;
    animations give their first frame. Raises ImageError for empty, oversized, truncated,
    corrupt or non-image input; the size limits are checked from the header before decoding.
    """
    raw = _as_bytes(data)
    if not raw:
        raise ImageError("empty request: 0 bytes of image data")
    if len(raw) > max_bytes:
        raise ImageError(f"image data is {len(raw)} bytes, more than the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            # Sizes are checked against max_pixels below; Pillow still refuses > 2x its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except UnidentifiedImageError:
        head = raw[:16]
        raise ImageError(
            f"not an image in a supported format ({', '.join(FORMATS)}); "
            f"{len(raw)} bytes starting {head!r}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad request
        raise ImageError(f"corrupt or truncated image: unreadable header ({exc})") from None
    fmt = image.format
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{fmt} image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{fmt} image is {width}x{height} ({width * height / 1e6:.1f} MP), more than the "
            f"{max_pixels / 1e6:.1f} MP limit (decode parameter max_pixels)"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
        raise ImageError(f"corrupt or truncated {fmt} image ({width}x{height}): {exc}") from None


def network_size(
    height: int, width: int, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE
) -> tuple[int, int]:
    """The (h, w) the networks run at for an image of (height, width).

    The original size when it fits; else scaled down so the longest side is ``max_side``
    (aspect ratio kept). Each side is then clamped to [min_side, max_side], so tiny or very
    thin images are stretched to a size the networks can process.
    """
    scale = min(1.0, max_side / max(height, width))
    h = min(max(round(height * scale), min_side), max_side)
    w = min(max(round(width * scale), min_side), max_side)
    return h, w


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> [h, w, 3] with Pillow's (antialiased) bilinear filter."""
    if image.shape[:2] == tuple(size):
        return image
    h, w = size
    resized = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.uint8)


def network_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the network batch: float32 [1, 3, h, w], values 0..255."""
    resized = resize_rgb(image, size)
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
