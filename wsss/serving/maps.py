"""Score maps (probabilities, CAMs) back to the image size; numpy only.

:func:`resize_bilinear` reproduces ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``, the upsampling used in training and evaluation, so served maps match the
in-process pipeline. :func:`upsample_argmax` produces a full-size label map in row chunks, so a
large photograph never needs a full-size [K, H, W] array.
"""

from __future__ import annotations

import numpy as np


def _source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: (lower source index, upper source index, weight of the upper)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _resize_rows(maps: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    y0, y1, wy = rows
    x0, x1, wx = cols
    top, bottom = maps[:, y0], maps[:, y1]  # [K, h_out, w_in]
    vertical = top + (bottom - top) * wy[None, :, None]
    left, right = vertical[:, :, x0], vertical[:, :, x1]
    return left + (right - left) * wx[None, None, :]


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [K, h, w] -> float32 [K, H, W], bilinear, half-pixel centres (align_corners=False)."""
    maps = np.asarray(maps, dtype=np.float32)
    k, h, w = maps.shape
    if (h, w) == tuple(size):
        return maps
    out_h, out_w = size
    return _resize_rows(maps, _source_index(h, out_h), _source_index(w, out_w))


def upsample_argmax(probs: np.ndarray, size: tuple[int, int], chunk_rows: int = 128) -> np.ndarray:
    """argmax over K of the bilinearly upsampled maps: float [K, h, w] -> uint8 [H, W].

    Works in chunks of output rows (memory O(K x chunk_rows x W)). ``K`` must be <= 256.
    """
    k, h, w = probs.shape
    if k > 256:
        raise ValueError(f"{k} classes do not fit a uint8 label map")
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return np.asarray(probs).argmax(0).astype(np.uint8)
    probs = np.asarray(probs, dtype=np.float32)
    y0, y1, wy = _source_index(h, out_h)
    cols = _source_index(w, out_w)
    labels = np.empty((out_h, out_w), dtype=np.uint8)
    for start in range(0, out_h, chunk_rows):
        rows = slice(start, min(start + chunk_rows, out_h))
        chunk = _resize_rows(probs, (y0[rows], y1[rows], wy[rows]), cols)
        labels[rows] = chunk.argmax(0)
    return labels
