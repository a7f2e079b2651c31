"""What every dataset reader returns: a :class:`Sample` per image, from an :class:`ImageSource`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


@dataclass
class Sample:
    """One image with its weak and (optional) dense annotations.

    image:    uint8 [H, W, 3], RGB.
    labels:   float32 [C], multi-hot over the C foreground classes (class_names[1:]).
    mask:     uint8 [H, W] or None; 0 = background, k = class_names[k], 255 = ignore.
    saliency: uint8 [H, W] or None; class-agnostic saliency, 0..255 (EPS, FBR I+S).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    saliency: np.ndarray | None = None


class ImageSource(Protocol):
    """A dataset: named splits of image ids, and a loader for one id.

    class_names[0] is always "background"; the C foreground classes follow.
    """

    root: Path
    class_names: tuple[str, ...]

    def ids(self, split: str) -> list[str]:
        """Image ids of a split, in file order. Raises DatasetError if the split is unknown."""
        ...

    def load(self, name: str) -> Sample:
        """Reads one image and its annotations. Raises DatasetError naming a missing file."""
        ...

    def has_masks(self, split: str) -> bool:
        """Whether every image of the split has a ground-truth mask."""
        ...
