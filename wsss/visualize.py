"""Colour maps and overlays for masks and CAMs (numpy + Pillow only, no torch)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from wsss.constants import voc_palette

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Label map uint8 [H, W] -> RGB uint8 [H, W, 3] in VOC colours."""
    return _PALETTE[mask.astype(np.int64) % 256]


def heatmap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], [H, W] -> RGB uint8 [H, W, 3] (a jet-like blue-green-red ramp)."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends an RGB colour layer over an RGB image; both uint8 [H, W, 3]."""
    return (image * (1 - alpha) + colors * alpha).astype(np.uint8)


def montage(rows: list[list[np.ndarray]], titles: list[str], tile: int = 160) -> Image.Image:
    """A grid of RGB tiles (each resized to ``tile`` px high) with one title per column."""
    header = 16
    resized = [
        [
            np.asarray(
                Image.fromarray(t).resize(
                    (max(1, round(t.shape[1] * tile / t.shape[0])), tile), Image.NEAREST
                )
            )
            for t in row
        ]
        for row in rows
    ]
    widths = [max(r[c].shape[1] for r in resized) for c in range(len(titles))]
    canvas = Image.new(
        "RGB", (sum(widths) + 4 * len(widths), header + len(rows) * (tile + 4)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    x = 0
    for c, title in enumerate(titles):
        draw.text((x + 2, 2), title, fill="black")
        for r, row in enumerate(resized):
            canvas.paste(Image.fromarray(row[c]), (x, header + r * (tile + 4)))
        x += widths[c] + 4
    return canvas
