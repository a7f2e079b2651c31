"""Constants shared by training, export, serving and the client (numpy-free, torch-free).

One source of truth: checkpoints and ONNX metadata carry copies of these values, so a served
model never depends on this file matching the one it was trained with.
"""

from __future__ import annotations

IGNORE_INDEX = 255
BACKGROUND = "background"

VOC_CLASSES: tuple[str, ...] = (
    BACKGROUND,
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# ImageNet statistics on 0-255 RGB input; every backbone here is normalised with them.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat [r, g, b, r, g, b, ...] list of ``3 * n`` ints."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette
