"""Real photographs that ship inside installed packages, for the imagenet source's demo, tests
and measurements (no download at run time).

Each :class:`Photo` has the VOC classes a person would name in it (``expected``; empty when none
of the 20 is there) and, where one exists, a reference region:

- ``quokka`` (imgaug 0.4.0's ``quokka.jpg`` + ``quokka_annotations.json``: one polygon outline of
  the animal, the only real photo with an object mask we found in an installable package). A
  quokka is no VOC class; measurements group ImageNet's marsupials for it
  (``tests/data/imagenet_marsupial.tsv``).
- ``chelsea`` (scikit-image's cat): two boxes drawn once by hand and checked in here, one inside
  the cat and one on the blurred background at the right edge.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (top, bottom, left, right) in pixels of the 451 x 300 photo
CHELSEA_CAT_BOX = (20, 300, 40, 360)
CHELSEA_BACKGROUND_BOX = (80, 300, 405, 451)
MARSUPIAL_TABLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "imagenet_marsupial.tsv"


class PhotoMissing(FileNotFoundError):
    """The package that ships a photo is not installed; the message says which."""


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhotoMissing(f"{relative}: package {package} is not installed ({install})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise PhotoMissing(f"{path} is missing")
    return path


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        return image[0] if isinstance(image, tuple) else image

    return load


def quokka_path() -> Path:
    """imgaug's quokka photo (installed data only: ``pip install --no-deps imgaug==0.4.0``)."""
    return _package_file("imgaug", "quokka.jpg", "pip install --no-deps imgaug==0.4.0")


def quokka_mask() -> np.ndarray:
    """bool [643, 960]: the inside of imgaug's polygon outline of the quokka."""
    from PIL import Image, ImageDraw

    path = _package_file("imgaug", "quokka_annotations.json", "pip install --no-deps imgaug==0.4.0")
    polygon = json.loads(path.read_text())["polygons"][0]["keypoints"]
    height, width = _read_rgb(quokka_path()).shape[:2]
    mask = Image.new("L", (width, height))
    ImageDraw.Draw(mask).polygon([(p["x"], p["y"]) for p in polygon], fill=1)
    return np.asarray(mask).astype(bool)


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """bool [H, W], True inside (top, bottom, left, right)."""
    mask = np.zeros(shape, dtype=bool)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = True
    return mask


@dataclass(frozen=True)
class Photo:
    name: str
    load: Callable[[], np.ndarray]
    source: str
    expected: tuple[str, ...] = field(default=())
    note: str = ""


def _matplotlib_sample(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        return _read_rgb(Path(matplotlib.get_data_path()) / "sample_data" / name)

    return load


PHOTOS: tuple[Photo, ...] = (
    Photo("chelsea", _skimage("chelsea"), "scikit-image data.chelsea", ("cat",)),
    Photo(
        "motorcycle", _skimage("stereo_motorcycle"), "scikit-image data.stereo_motorcycle (left)",
        ("motorbike",),
    ),
    Photo("coffee", _skimage("coffee"), "scikit-image data.coffee", (), "a cup: no VOC class"),
    Photo("rocket", _skimage("rocket"), "scikit-image data.rocket", (), "no VOC class"),
    Photo(
        "astronaut", _skimage("astronaut"), "scikit-image data.astronaut", ("person",),
        "ImageNet has no general person class",
    ),
    Photo(
        "grace_hopper", _matplotlib_sample("grace_hopper.jpg"), "matplotlib sample_data",
        ("person",), "ImageNet has no general person class",
    ),
    Photo(
        "quokka", lambda: _read_rgb(quokka_path()), "imgaug quokka.jpg", (),
        "a marsupial: no VOC class; has an object mask",
    ),
)  # fmt: skip


def photo(name: str) -> Photo:
    for item in PHOTOS:
        if item.name == name:
            return item
    raise KeyError(f"unknown photo {name!r}; known: {[p.name for p in PHOTOS]}")
