"""PASCAL VOC 2012 reader (also reads the synthetic benchmark, which is written in this layout).

Layout under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png   (preferred when present) or SegmentationClass/<id>.png
    ImageSets/Segmentation/<split>.txt   one id per line (train, train_aug, val, ...)
    cls_labels.npy | cls_labels.json     optional image-level labels
    Saliency/<id>.png                    optional class-agnostic saliency, grey 0..255
    classes.txt                          optional class names, one a line, "background" first

Masks are palette (or grey) PNGs whose pixel *index* is the class (255 = ignore); an RGB mask is
mapped back to indices through the VOC colour map. Image-level labels come from the cls_labels
file when there is one, else from the classes present in the mask. The small file readers here
(:func:`read_rgb`, :func:`read_index_png`, :func:`read_grey`) are shared by the other readers.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.constants import BACKGROUND, IGNORE_INDEX, VOC_CLASSES, voc_palette
from wsss.data.base import DatasetError, Sample

IMAGE_DIR = "JPEGImages"
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
SPLIT_DIR = Path("ImageSets") / "Segmentation"
SALIENCY_DIR = "Saliency"
CLASSES_FILE = "classes.txt"
CLS_LABEL_FILES = ("cls_labels.npy", "cls_labels.json")


# ----------------------------------------------------------------------------- file readers


def open_image(path: Path) -> Image.Image:
    """Opens and decodes an image file; DatasetError naming the path when missing or bad."""
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    return image


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB (grey, palette, RGBA and 16-bit are converted)."""
    image = open_image(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _rgb_to_index(rgb: np.ndarray, path: Path) -> np.ndarray:
    """uint8 [H, W, 3] VOC-coloured mask -> uint8 [H, W] class indices."""
    palette = np.asarray(voc_palette(256), dtype=np.int64).reshape(256, 3)
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    lookup = {int(k): i for i, k in reversed(list(enumerate(keys)))}
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(code, return_inverse=True)
    out = np.empty(len(values), dtype=np.uint8)
    for j, value in enumerate(values):
        if int(value) not in lookup:
            colour = ((value >> 16) & 255, (value >> 8) & 255, value & 255)
            raise DatasetError(f"{path}: colour {colour} is not in the VOC colour map")
        out[j] = lookup[int(value)]
    return out[inverse.reshape(code.shape)]


def read_index_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 [H, W] class indices (palette index or grey value, never RGB)."""
    image = open_image(path)
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        array = np.asarray(image)
        if array.max(initial=0) > 255:
            raise DatasetError(f"{path}: label values above 255")
        return array.astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        return _rgb_to_index(np.asarray(image.convert("RGB")), path)
    raise DatasetError(f"{path}: unsupported mask mode {image.mode!r} (expected P or L)")


def read_grey(path: Path) -> np.ndarray:
    """A grey image (saliency) as uint8 [H, W]."""
    return np.asarray(open_image(path).convert("L"), dtype=np.uint8).copy()


def check_same_size(array: np.ndarray, image: np.ndarray, path: Path) -> None:
    """Raises DatasetError when an annotation [H, W] does not match the image [H, W, 3]."""
    if array.shape[:2] != image.shape[:2]:
        raise DatasetError(
            f"{path}: size {array.shape[1]}x{array.shape[0]} differs from its image "
            f"({image.shape[1]}x{image.shape[0]})"
        )


def labels_from_mask(mask: np.ndarray, n_classes: int, path: Path) -> np.ndarray:
    """Multi-hot float32 [C] of the classes present in a mask [H, W] (0 and 255 skipped).

    ``n_classes`` counts the foreground classes only (C).
    """
    present = np.unique(mask)
    present = present[(present != 0) & (present != IGNORE_INDEX)]
    if present.size and int(present.max()) > n_classes:
        raise DatasetError(
            f"{path}: class index {int(present.max())} out of range (1..{n_classes} or 255)"
        )
    labels = np.zeros(n_classes, dtype=np.float32)
    labels[present.astype(np.int64) - 1] = 1.0
    return labels


def read_class_names(path: Path) -> tuple[str, ...]:
    """A classes.txt: one name per line, "background" first, blank lines skipped."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names or names[0] != BACKGROUND:
        raise DatasetError(f"{path}:1: the first class must be {BACKGROUND!r}")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate class names")
    return tuple(names)


# ----------------------------------------------------------------------------- cls_labels


def voc_key(key: object) -> str:
    """IRN stores ids as ints (2007000032); PSA/SEAM as strings ("2007_000032")."""
    if isinstance(key, bytes):
        key = key.decode()
    if isinstance(key, (int, np.integer)):
        text = str(int(key))
        return f"{text[:4]}_{text[4:]}" if len(text) > 4 else text
    return str(key)


def _multi_hot(indices: Sequence[int], n_classes: int, where: str) -> np.ndarray:
    labels = np.zeros(n_classes, dtype=np.float32)
    for index in indices:
        if not 1 <= index <= n_classes:
            raise DatasetError(f"{where}: class index {index} out of range 1..{n_classes}")
        labels[index - 1] = 1.0
    return labels


def _load_cls_npy(path: Path, n_classes: int) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=True)
        table = data.item() if isinstance(data, np.ndarray) and data.dtype == object else data
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    if not isinstance(table, Mapping):
        raise DatasetError(f"{path}: expected a pickled dict id -> [{n_classes}] vector")
    out = {}
    for key, value in table.items():
        vector = np.asarray(value, dtype=np.float32).reshape(-1)
        if vector.shape != (n_classes,):
            raise DatasetError(
                f"{path}: entry {key!r} has {vector.size} values, expected {n_classes}"
            )
        out[voc_key(key)] = vector
    return out


def _load_cls_json(path: Path, class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(table, Mapping):
        raise DatasetError(f"{path}: expected an object {{id: [class indices or names]}}")
    n_classes = len(class_names) - 1
    index_of = {name: i for i, name in enumerate(class_names) if i > 0}
    out = {}
    for key, value in table.items():
        where = f"{path}: entry {key!r}"
        if not isinstance(value, list):
            raise DatasetError(f"{where}: expected a list of class indices or names")
        indices = []
        for item in value:
            if isinstance(item, str):
                if item not in index_of:
                    raise DatasetError(f"{where}: unknown class {item!r}")
                indices.append(index_of[item])
            elif isinstance(item, int) and not isinstance(item, bool):
                indices.append(item)
            else:
                raise DatasetError(f"{where}: {item!r} is neither a class index nor a name")
        out[str(key)] = _multi_hot(indices, n_classes, where)
    return out


def load_cls_labels(path: Path, class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """cls_labels.npy (pickled dict id -> [C] vector) or .json ({id: [indices 1..C or names]})."""
    if path.suffix == ".npy":
        return _load_cls_npy(path, len(class_names) - 1)
    return _load_cls_json(path, class_names)


# ----------------------------------------------------------------------------- split lists


def read_split_file(path: Path) -> list[str]:
    """Ids of a split list: one per line; blank lines and surrounding whitespace ignored.

    The two-column lists of some repositories (``/JPEGImages/<id>.jpg
    /SegmentationClassAug/<id>.png``) are accepted too.
    """
    ids = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) == 1 and "/" not in fields[0]:
            ids.append(fields[0])
        elif fields[0].startswith("/JPEGImages/") and len(fields) <= 2:
            ids.append(Path(fields[0]).stem)
        else:
            raise DatasetError(f"{path}:{number}: expected one image id, got {raw.strip()!r}")
    return ids


# ----------------------------------------------------------------------------- the source


class VOCSource:
    """PASCAL VOC 2012 layout as an :class:`~wsss.data.base.ImageSource`.

    class_names: given, else ``classes.txt`` at root, else :data:`wsss.constants.VOC_CLASSES`.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        if not (self.root / IMAGE_DIR).is_dir():
            raise DatasetError(
                f"not a VOC folder: {self.root / IMAGE_DIR} is missing (expected {IMAGE_DIR}/, "
                f"SegmentationClass[Aug]/ and {SPLIT_DIR.as_posix()}/<split>.txt, e.g. train.txt)"
            )
        self.class_names = self._class_names(class_names)
        self.mask_dir = next((self.root / d for d in MASK_DIRS if (self.root / d).is_dir()), None)
        self.split_dir = self.root / SPLIT_DIR
        self.saliency_dir = self.root / SALIENCY_DIR
        self._cls_labels: dict[str, np.ndarray] | None = None
        self._cls_path = next(
            (self.root / f for f in CLS_LABEL_FILES if (self.root / f).is_file()), None
        )
        self._splits: dict[str, list[str]] = {}

    def _class_names(self, given: Sequence[str] | None) -> tuple[str, ...]:
        if given is not None:
            names = tuple(given)
            if not names or names[0] != BACKGROUND:
                raise DatasetError(f"class_names must start with {BACKGROUND!r}")
            return names
        path = self.root / CLASSES_FILE
        return read_class_names(path) if path.is_file() else VOC_CLASSES

    @property
    def n_classes(self) -> int:
        """Number of foreground classes C."""
        return len(self.class_names) - 1

    def splits(self) -> list[str]:
        """Names of the split lists present under ImageSets/Segmentation."""
        if not self.split_dir.is_dir():
            return []
        return sorted(p.stem for p in self.split_dir.glob("*.txt"))

    def ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in file order."""
        if split not in self._splits:
            path = self.split_dir / f"{split}.txt"
            if not path.is_file():
                available = ", ".join(self.splits()) or "none"
                raise DatasetError(f"split file not found: {path} (available splits: {available})")
            self._splits[split] = read_split_file(path)
        return list(self._splits[split])

    def image_path(self, name: str) -> Path:
        return self.root / IMAGE_DIR / f"{name}.jpg"

    def mask_path(self, name: str) -> Path | None:
        return None if self.mask_dir is None else self.mask_dir / f"{name}.png"

    def has_masks(self, split: str) -> bool:
        """Whether every id of the split has a mask file."""
        ids = self.ids(split)
        return self.mask_dir is not None and all(self.mask_path(n).is_file() for n in ids)

    def cls_labels(self) -> dict[str, np.ndarray] | None:
        """The cls_labels table (id -> float32 [C]), or None when the dataset has none."""
        if self._cls_labels is None and self._cls_path is not None:
            self._cls_labels = load_cls_labels(self._cls_path, self.class_names)
        return self._cls_labels

    def load(self, name: str) -> Sample:
        """Reads image, mask (if any), labels and saliency (if any) of one id."""
        image = read_rgb(self.image_path(name))
        mask = None
        mask_path = self.mask_path(name)
        if mask_path is not None and mask_path.is_file():
            mask = read_index_png(mask_path)
            check_same_size(mask, image, mask_path)
        labels = self._labels(name, mask, mask_path)
        saliency = None
        saliency_path = self.saliency_dir / f"{name}.png"
        if saliency_path.is_file():
            saliency = read_grey(saliency_path)
            check_same_size(saliency, image, saliency_path)
        return Sample(name=name, image=image, labels=labels, mask=mask, saliency=saliency)

    def _labels(self, name: str, mask: np.ndarray | None, mask_path: Path | None) -> np.ndarray:
        table = self.cls_labels()
        if table is not None and name in table:
            return table[name].copy()
        if mask is not None and mask_path is not None:
            return labels_from_mask(mask, self.n_classes, mask_path)
        if table is not None:
            raise DatasetError(
                f"{self._cls_path}: no labels for {name!r} and no mask to derive them"
            )
        raise DatasetError(
            f"no image-level labels for {name!r}: no cls_labels file at {self.root} "
            f"and no mask {mask_path or self.root / MASK_DIRS[-1] / (name + '.png')}"
        )
