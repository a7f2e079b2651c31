"""Datasets: readers for VOC, COCO, a user's folder and the built-in synthetic benchmark.

Everything here is torch-free (numpy, Pillow, scipy, scikit-image); the PyTorch datasets live
in :mod:`wsss.data.loaders`, which is not imported by this package.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsss.data.base import DatasetError, ImageSource, Sample
from wsss.data.coco import COCO_CLASSES, COCOSource
from wsss.data.folder import FolderSource
from wsss.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, ensure_synthetic
from wsss.data.voc import VOCSource

KINDS = ("synthetic", "voc", "coco", "folder")


def default_cache_dir() -> Path:
    """``$WSSS_CACHE`` or ``~/.cache/wsss``."""
    return Path(os.environ.get("WSSS_CACHE", "~/.cache/wsss")).expanduser()


def build_source(
    kind: str,
    root: str | os.PathLike | None,
    synthetic: SyntheticConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageSource:
    """The dataset named by ``--data KIND [--root DIR]``.

    synthetic: generated (once) into ``cache_dir``, else ``root``, else :func:`default_cache_dir`,
    then read with :class:`VOCSource` (progress: see :func:`ensure_synthetic`).
    voc / coco / folder need ``root``.
    """
    if kind == "synthetic":
        cache = cache_dir if cache_dir is not None else root
        cache = Path(cache).expanduser() if cache is not None else default_cache_dir()
        folder = ensure_synthetic(synthetic or SyntheticConfig(), cache, progress=progress)
        return VOCSource(folder)
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset {kind!r}; choose one of {', '.join(KINDS)}")
    if root is None:
        raise DatasetError(f"--data {kind} needs --root DIR")
    if kind == "voc":
        return VOCSource(root)
    if kind == "coco":
        return COCOSource(root)
    return FolderSource(root)


__all__ = [
    "COCO_CLASSES",
    "COCOSource",
    "DatasetError",
    "FolderSource",
    "ImageSource",
    "KINDS",
    "SYNTHETIC_CLASSES",
    "Sample",
    "SyntheticConfig",
    "VOCSource",
    "build_source",
    "default_cache_dir",
    "ensure_synthetic",
]
