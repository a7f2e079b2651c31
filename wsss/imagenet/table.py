"""The ImageNet -> class table (``imagenet_voc.tsv``): which ImageNet-1k classes each class of a
grouping (the 20 PASCAL VOC classes by default) gathers.

Columns: ``index`` (torchvision's class index, 0..999), ``wnid`` (WordNet 3.0 id), ``name``,
``voc_class`` (empty: the ImageNet class belongs to no class of the grouping), ``via`` (the root
synset that brought it in). Built by :mod:`wsss.imagenet.build_table`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from wsss.constants import VOC_CLASSES

DEFAULT_TABLE = Path(__file__).with_name("imagenet_voc.tsv")
IMAGENET_CLASSES = 1000


class TableError(ValueError):
    """A malformed table; the message names the file and the row."""


@dataclass(frozen=True)
class ImagenetTable:
    """names [1000] of the ImageNet classes and ``members``: class -> ImageNet indices."""

    path: Path
    names: tuple[str, ...]
    wnids: tuple[str, ...]
    members: dict[str, tuple[int, ...]]

    @property
    def classes(self) -> list[str]:
        """The grouping's classes, in the table's order (VOC order for the default table)."""
        return list(self.members)

    def membership(self) -> torch.Tensor:
        """float32 [C, 1000]: 1 where ImageNet class k belongs to class c."""
        matrix = torch.zeros(len(self.members), IMAGENET_CLASSES)
        for row, indices in enumerate(self.members.values()):
            matrix[row, list(indices)] = 1.0
        return matrix


def load_table(path: str | Path = DEFAULT_TABLE, classes: list[str] | None = None) -> ImagenetTable:
    """Reads and checks a table: 1000 rows, indices 0..999 in order, one class per ImageNet class.

    ``classes``: the grouping's class order (default: VOC order when the table's classes are the
    20 VOC classes, else their order of first appearance). A class with no member is an error.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if len(rows) != IMAGENET_CLASSES:
        raise TableError(f"{path}: {len(rows)} rows, expected {IMAGENET_CLASSES}")
    grouped: dict[str, list[int]] = {}
    for position, row in enumerate(rows):
        try:
            index = int(row["index"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(f"{path}: row {position + 2}: bad or missing index") from exc
        if index != position:
            raise TableError(f"{path}: row {position + 2}: index {index}, expected {position}")
        if row.get("voc_class"):
            grouped.setdefault(row["voc_class"], []).append(index)
    if classes is None:
        voc = list(VOC_CLASSES[1:])
        classes = voc if set(grouped) == set(voc) else list(grouped)
    unknown = sorted(set(grouped) - set(classes))
    empty = [c for c in classes if c not in grouped]
    if unknown or empty:
        raise TableError(f"{path}: classes not in the grouping {unknown}, without members {empty}")
    return ImagenetTable(
        path=path,
        names=tuple(row["name"] for row in rows),
        wnids=tuple(row["wnid"] for row in rows),
        members={c: tuple(grouped[c]) for c in classes},
    )
