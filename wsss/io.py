"""Atomic file writes: everything goes to a temporary name first and is renamed into place, so
an interrupted run never leaves a half-written output that a resumed run would trust."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.constants import voc_palette


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` atomically."""
    import torch

    path = Path(path)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_json(data: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    path = Path(path)
    tmp = _tmp(path).with_suffix(".npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_label_png(mask: np.ndarray, path: str | Path) -> None:
    """A label map uint8 [H, W] as a palette PNG (VOC colours, 255 = ignore white-ish)."""
    path = Path(path)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    tmp = _tmp(path)
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def load_label_png(path: str | Path) -> np.ndarray:
    """Palette indices of a label PNG, uint8 [H, W]."""
    return np.asarray(Image.open(path))
