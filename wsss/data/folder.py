"""A user's own images with image-level labels (masks optional).

Layout::

    root/images/*.jpg|jpeg|png|bmp|webp   (or the images directly in root)
    root/labels.csv | root/labels.json    (or labels_file=...)
    root/classes.txt                      optional class list, "background" first
    root/masks/<stem>.png                 optional ground truth (palette index or grey, 255 ignore)
    root/saliency/<stem>.png              optional saliency, grey 0..255

labels.csv::

    image,labels[,split]
    dog1.jpg,dog;person,train
    cat2,cat,val

The ``image`` cell is a file name or its stem. Labels are separated by ``;``, ``,`` inside a
quoted cell, or spaces; each is a class name or a class index 1..C (indices need a known class
list). An empty labels cell means an image with no object.

labels.json, either ``{"dog1.jpg": ["dog", "person"], ...}`` or::

    {"classes": ["cat", "dog", "person"],
     "labels": {"dog1.jpg": ["dog", "person"], ...},
     "splits": {"train": ["dog1.jpg", ...], "val": [...]}}

Class names: the JSON ``classes`` list, else ``classes.txt``, else the sorted union of the names
seen; "background" is put first when missing. With a known class list an unknown name is an
error (``labels.csv:7: unknown class 'dgo'``).

Splits (the rule): a ``split`` column in the CSV (one split name per row, e.g. train / val /
test) or a ``splits`` object in the JSON decides; without either, every labelled image is in
both "train" and "val" (WSSS scores its pseudo masks on the training images anyway). Images on
disk that have no entry in the labels file are not part of the dataset. An entry whose image
file is missing is an error naming the line (CSV) or the entry (JSON). Ids are file stems.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageOps

from wsss.constants import BACKGROUND
from wsss.data.base import DatasetError, Sample
from wsss.data.voc import (
    check_same_size,
    open_image,
    read_class_names,
    read_grey,
    read_index_png,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_LABEL_FILES = ("labels.csv", "labels.json")
DEFAULT_SPLITS = ("train", "val")
_SEPARATORS = re.compile(r"[;,\s]+")


@dataclass
class _Entry:
    """One labelled image as read from the labels file (names or 1-based indices)."""

    key: str
    where: str  # "labels.csv:7" or "labels.json: labels['x.jpg']"
    tokens: list[str | int]
    splits: list[str] = field(default_factory=list)


def _find_images(directory: Path) -> dict[str, Path]:
    """Image files of a folder keyed by stem; raises on two files with one stem."""
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise DatasetError(
                    f"two images share the id {path.stem!r}: {found[path.stem]}, {path}"
                )
            found[path.stem] = path
    return found


def _parse_token(token: str) -> str | int:
    return int(token) if token.isdigit() else token


def _read_csv(path: Path) -> list[_Entry]:
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DatasetError(f"{path}:1: empty file, expected a header 'image,labels'")
    header = [cell.strip().lower() for cell in rows[0]]
    if "image" not in header or "labels" not in header:
        raise DatasetError(f"{path}:1: expected a header with columns 'image,labels[,split]'")
    col_image, col_labels = header.index("image"), header.index("labels")
    col_split = header.index("split") if "split" in header else None
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name}:{number}"
        if len(row) > len(header):
            raise DatasetError(
                f"{where}: {len(row)} cells, header has {len(header)} (quote labels)"
            )
        row = row + [""] * (len(header) - len(row))
        image = row[col_image].strip()
        if not image:
            raise DatasetError(f"{where}: empty image name")
        tokens = [_parse_token(t) for t in _SEPARATORS.split(row[col_labels].strip()) if t]
        splits = []
        if col_split is not None:
            split = row[col_split].strip()
            if not split:
                raise DatasetError(f"{where}: empty split (the file has a 'split' column)")
            splits = [split]
        entries.append(_Entry(image, where, tokens, splits))
    return entries


def _json_tokens(value: object, where: str) -> list[str | int]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: expected a list of class names or indices")
    tokens: list[str | int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise DatasetError(f"{where}: {item!r} is neither a class name nor an index")
        tokens.append(item)
    return tokens


def _read_json(path: Path) -> tuple[list[_Entry], list[str] | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path.name}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(data, Mapping):
        raise DatasetError(f"{path.name}: expected a JSON object")
    classes = None
    if "labels" in data and isinstance(data["labels"], Mapping):
        table, prefix = data["labels"], "labels"
        if "classes" in data:
            classes = data["classes"]
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise DatasetError(f"{path.name}: 'classes' must be a list of names")
    else:
        table, prefix = data, ""
    entries = {}
    for key, value in table.items():
        where = f"{path.name}: {prefix}[{key!r}]" if prefix else f"{path.name}: [{key!r}]"
        entries[key] = _Entry(str(key), where, _json_tokens(value, where))
    if prefix and "splits" in data:
        _apply_json_splits(path, data["splits"], entries)
    return list(entries.values()), classes


def _apply_json_splits(path: Path, splits: object, entries: dict[str, _Entry]) -> None:
    if not isinstance(splits, Mapping):
        raise DatasetError(f"{path.name}: 'splits' must map split names to image lists")
    by_stem = {Path(k).stem: e for k, e in entries.items()}
    for split, images in splits.items():
        if not isinstance(images, list):
            raise DatasetError(f"{path.name}: splits[{split!r}] must be a list of images")
        for image in images:
            entry = entries.get(image) or by_stem.get(Path(str(image)).stem)
            if entry is None:
                raise DatasetError(f"{path.name}: splits[{split!r}]: {image!r} has no labels")
            entry.splits.append(str(split))


def _class_list(
    explicit: Sequence[str] | None, entries: list[_Entry], where: str
) -> tuple[str, ...]:
    if explicit is not None:
        names = [n for n in explicit if n != BACKGROUND]
        if len(set(names)) != len(names):
            raise DatasetError(f"{where}: duplicate class names")
        return (BACKGROUND, *names)
    seen = {t for e in entries for t in e.tokens if isinstance(t, str) and t != BACKGROUND}
    for entry in entries:
        for token in entry.tokens:
            if isinstance(token, int):
                raise DatasetError(
                    f"{entry.where}: class index {token} needs a class list "
                    "(classes.txt or a JSON 'classes' list)"
                )
    return (BACKGROUND, *sorted(seen))


def _multi_hot(entry: _Entry, class_names: tuple[str, ...]) -> np.ndarray:
    n_classes = len(class_names) - 1
    index_of = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros(n_classes, dtype=np.float32)
    for token in entry.tokens:
        if token == BACKGROUND or token == 0:
            raise DatasetError(f"{entry.where}: 'background' is not an image-level label")
        if isinstance(token, int):
            if token > n_classes:
                raise DatasetError(
                    f"{entry.where}: class index {token} out of range 1..{n_classes}"
                )
            labels[token - 1] = 1.0
        elif token in index_of:
            labels[index_of[token] - 1] = 1.0
        else:
            raise DatasetError(f"{entry.where}: unknown class {token!r}")
    return labels


class FolderSource:
    """A folder of images with a CSV/JSON of image-level labels, as an ImageSource."""

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        image_dir = self.root / "images"
        self.image_dir = image_dir if image_dir.is_dir() else self.root
        self.mask_dir = self.root / "masks"
        self.saliency_dir = self.root / "saliency"
        self.labels_path = self._labels_path(labels_file)
        if self.labels_path.suffix.lower() == ".json":
            entries, json_classes = _read_json(self.labels_path)
        else:
            entries, json_classes = _read_csv(self.labels_path), None
        explicit = class_names if class_names is not None else json_classes
        if explicit is None and (self.root / "classes.txt").is_file():
            explicit = read_class_names(self.root / "classes.txt")
        self.class_names = _class_list(explicit, entries, self.labels_path.name)
        self._paths: dict[str, Path] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._splits: dict[str, list[str]] = {}
        self._index(entries)

    def _labels_path(self, labels_file: str | Path | None) -> Path:
        if labels_file is not None:
            path = Path(labels_file).expanduser()
            if not path.is_file() and (self.root / path).is_file():
                path = self.root / path
            if not path.is_file():
                raise DatasetError(f"labels file not found: {path}")
            return path
        for name in DEFAULT_LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise DatasetError(
            f"no labels file in {self.root}: expected {' or '.join(DEFAULT_LABEL_FILES)}"
        )

    def _index(self, entries: list[_Entry]) -> None:
        images = _find_images(self.image_dir)
        has_splits = any(e.splits for e in entries)
        for entry in entries:
            name = Path(entry.key).stem
            path = images.get(name)
            if path is None or (Path(entry.key).suffix and path.name != Path(entry.key).name):
                raise DatasetError(
                    f"{entry.where}: image file not found: {self.image_dir / entry.key}"
                )
            if name in self._labels:
                raise DatasetError(f"{entry.where}: image {entry.key!r} is listed twice")
            self._paths[name] = path
            self._labels[name] = _multi_hot(entry, self.class_names)
            for split in entry.splits if has_splits else DEFAULT_SPLITS:
                self._splits.setdefault(split, []).append(name)

    def splits(self) -> list[str]:
        return sorted(self._splits)

    def ids(self, split: str) -> list[str]:
        """Image ids (file stems) of a split, in labels-file order."""
        if split not in self._splits:
            available = ", ".join(self.splits()) or "none"
            raise DatasetError(
                f"unknown split {split!r} in {self.labels_path} (available: {available})"
            )
        return list(self._splits[split])

    def mask_path(self, name: str) -> Path:
        return self.mask_dir / f"{name}.png"

    def has_masks(self, split: str) -> bool:
        return all(self.mask_path(name).is_file() for name in self.ids(split))

    def load(self, name: str) -> Sample:
        """Image (EXIF orientation applied), labels from the labels file, mask/saliency if any."""
        if name not in self._paths:
            raise DatasetError(f"unknown image id {name!r} (not in {self.labels_path})")
        pil = ImageOps.exif_transpose(open_image(self._paths[name]))
        image = np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()
        mask = saliency = None
        mask_path = self.mask_path(name)
        if mask_path.is_file():
            mask = read_index_png(mask_path)
            check_same_size(mask, image, mask_path)
            _check_mask_range(mask, len(self.class_names) - 1, mask_path)
        saliency_path = self.saliency_dir / f"{name}.png"
        if saliency_path.is_file():
            saliency = read_grey(saliency_path)
            check_same_size(saliency, image, saliency_path)
        return Sample(name, image, self._labels[name].copy(), mask, saliency)


def _check_mask_range(mask: np.ndarray, n_classes: int, path: Path) -> None:
    bad = (mask > n_classes) & (mask != 255)
    if bad.any():
        raise DatasetError(
            f"{path}: class index {int(mask[bad].max())} out of range 0..{n_classes}"
        )
