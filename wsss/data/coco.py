"""MS COCO 2014 for WSSS, and the converter from COCO instance annotations to semantic masks.

Layout under ``root`` (what the WSSS repositories use)::

    train2014/COCO_train2014_<id>.jpg      val2014/COCO_val2014_<id>.jpg
    mask/train2014/<stem>.png              mask/val2014/<stem>.png

A mask pixel is a class index 0..80 (0 background, k = COCO_CLASSES[k]) or 255 (ignore: crowd
regions). Splits "train" and "val" are the sorted image files of each folder ("train2014" and
"val2014" are accepted as aliases). Image-level labels are the classes present in the mask.

The converter needs no pycocotools::

    python -m wsss.data.coco convert annotations/instances_train2014.json mask/train2014

Category ids (1..90 with gaps) map to 1..80 in id order. Polygons are rasterised with
PIL.ImageDraw at 4x supersampling (a pixel is in when at least half of it is covered);
run-length encodings are decoded in numpy (column-major, both the uncompressed ``counts`` list
and the compressed string of pycocotools' maskApi.c).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsss.constants import BACKGROUND, IGNORE_INDEX, voc_palette
from wsss.data.base import DatasetError, Sample
from wsss.data.voc import check_same_size, labels_from_mask, read_index_png, read_rgb

COCO_CLASSES: tuple[str, ...] = (
    BACKGROUND,
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# The 80 COCO category ids, in the order of COCO_CLASSES[1:].
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)  # fmt: skip

SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SUPERSAMPLE = 4


# ----------------------------------------------------------------------------- RLE and polygons


def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Decodes pycocotools' compressed RLE string into run lengths (maskApi.c ``rleFrString``).

    Each count is a signed LEB128-like number in 5-bit chunks, one character per chunk
    (``chr(48 + chunk)``, bit 0x20 = more chunks follow, bit 0x10 of the last chunk = sign).
    From the fourth count on (index i > 2) the stored value is the difference to count i - 2.
    """
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise DatasetError("compressed RLE string ends inside a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise DatasetError(
                    f"compressed RLE string has an invalid character {chr(data[p])!r}"
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts: Sequence[int] | str | bytes, height: int, width: int) -> np.ndarray:
    """Run lengths (alternating 0-runs and 1-runs, column-major) -> bool [height, width]."""
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise DatasetError(
            f"RLE counts sum to {int(runs.sum())}, expected {height}x{width}={height * width}"
        )
    values = (np.arange(runs.size) % 2).astype(bool)
    return np.repeat(values, runs).reshape(width, height).T


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons ([x1, y1, x2, y2, ...] in pixel-edge coordinates) -> bool [height, width].

    The union of the polygons, rasterised at ``SUPERSAMPLE`` x resolution inside their bounding
    box; a pixel is in when at least half of its sub-pixels are.
    """
    mask = np.zeros((height, width), dtype=bool)
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
    if not arrays:
        return mask
    points = np.concatenate(arrays)
    x0, y0 = np.floor(points.min(axis=0)).astype(int).clip(0, [width, height])
    x1, y1 = np.ceil(points.max(axis=0)).astype(int).clip(0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return mask
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in arrays:
        xy = (poly - [x0, y0]) * s - 0.5  # sub-pixel j is at PIL coordinate j
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255)
    coverage = np.asarray(canvas.reduce(s), dtype=np.uint8)
    mask[y0:y1, x0:x1] = coverage >= 128
    return mask


def segmentation_to_mask(segmentation: object, height: int, width: int) -> np.ndarray:
    """An annotation's ``segmentation`` (polygon list or RLE dict) -> bool [height, width]."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size", [height, width])
        if list(size) != [height, width]:
            raise DatasetError(f"RLE size {size} differs from the image size {[height, width]}")
        return rle_decode(segmentation["counts"], height, width)
    raise DatasetError(f"unknown segmentation format: {type(segmentation).__name__}")


# ----------------------------------------------------------------------------- converter


def category_mapping(categories: Sequence[dict]) -> dict[int, int]:
    """COCO category id -> contiguous class index 1..K, in category-id order."""
    ids = sorted(int(c["id"]) for c in categories)
    return {cat_id: index for index, cat_id in enumerate(ids, start=1)}


def semantic_mask(
    anns: Sequence[dict], height: int, width: int, cat_map: dict[int, int]
) -> np.ndarray:
    """Instances of one image -> uint8 [height, width] semantic mask.

    Non-crowd instances are painted largest first, so a small object lying on a large one
    stays visible; crowd regions become 255 where no instance was painted.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    plain = [a for a in anns if not a.get("iscrowd", 0)]
    for ann in sorted(plain, key=lambda a: -float(a.get("area", 0.0))):
        mask[segmentation_to_mask(ann["segmentation"], height, width)] = cat_map[ann["category_id"]]
    for ann in anns:
        if ann.get("iscrowd", 0):
            crowd |= segmentation_to_mask(ann["segmentation"], height, width)
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return mask


def save_index_png(mask: np.ndarray, path: Path) -> None:
    """uint8 [H, W] class indices -> palette PNG (VOC colours, index = class)."""
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette(256))
    image.save(path, format="PNG")


def convert_instances_to_masks(
    annotation_json: str | Path,
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    progress: bool = False,
) -> int:
    """Writes ``out_dir/<image stem>.png`` for every image of a COCO instances JSON.

    images_dir: when given, only images whose file exists there are converted.
    Returns the number of masks written.
    """
    path = Path(annotation_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DatasetError(f"annotation file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: not a COCO instances file (no {key!r})")
    cat_map = category_mapping(data["categories"])
    _warn_on_nonstandard(data["categories"])
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if ann["category_id"] not in cat_map:
            raise DatasetError(f"{path}: annotation {ann.get('id')} has unknown category")
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = data["images"]
    if images_dir is not None:
        images = [im for im in images if (Path(images_dir) / im["file_name"]).is_file()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = _progress(images, progress, desc=f"masks -> {out}")
    for info in bar:
        mask = semantic_mask(by_image.get(info["id"], []), info["height"], info["width"], cat_map)
        target = out / f"{Path(info['file_name']).stem}.png"
        tmp = target.with_name(target.name + ".tmp")
        save_index_png(mask, tmp)
        tmp.replace(target)  # an interrupted run never leaves a truncated PNG behind
    return len(images)


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def _warn_on_nonstandard(categories: Sequence[dict]) -> None:
    names = tuple(c["name"] for c in sorted(categories, key=lambda c: int(c["id"])))
    if names != COCO_CLASSES[1:]:
        print(
            f"note: {len(names)} categories differ from the 80 COCO classes; "
            "mask indices follow the file's category-id order",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------- the source


class COCOSource:
    """COCO 2014 converted for WSSS (see the module docstring) as an ImageSource."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.class_names = COCO_CLASSES
        self._ids: dict[str, list[str]] = {}

    def _split_dir(self, split: str) -> str:
        folder = SPLIT_DIRS.get(split, split)
        if folder not in SPLIT_DIRS.values() or not (self.root / folder).is_dir():
            available = [s for s, d in SPLIT_DIRS.items() if (self.root / d).is_dir()]
            raise DatasetError(
                f"split {split!r}: folder {self.root / folder} not found "
                f"(available splits: {', '.join(available) or 'none'})"
            )
        return folder

    def ids(self, split: str) -> list[str]:
        """Sorted image stems of ``train2014/`` or ``val2014/``."""
        folder = self._split_dir(split)
        if folder not in self._ids:
            files = (self.root / folder).iterdir()
            stems = [p.stem for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            self._ids[folder] = sorted(stems)
        return list(self._ids[folder])

    def _folder_of(self, name: str) -> str:
        for folder in SPLIT_DIRS.values():
            if folder in name:
                return folder
        for folder in SPLIT_DIRS.values():
            if (self.root / folder / f"{name}.jpg").is_file():
                return folder
        return SPLIT_DIRS["train"]

    def image_path(self, name: str) -> Path:
        return self.root / self._folder_of(name) / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.root / "mask" / self._folder_of(name) / f"{name}.png"

    def has_masks(self, split: str) -> bool:
        folder = self._split_dir(split)
        mask_dir = self.root / "mask" / folder
        return mask_dir.is_dir() and all((mask_dir / f"{n}.png").is_file() for n in self.ids(split))

    def load(self, name: str) -> Sample:
        """Image and mask; labels are the classes present in the mask."""
        image = read_rgb(self.image_path(name))
        mask_path = self.mask_path(name)
        if not mask_path.is_file():
            raise DatasetError(
                f"mask not found: {mask_path} (image-level labels come from the masks; "
                "run python -m wsss.data.coco convert)"
            )
        mask = read_index_png(mask_path)
        check_same_size(mask, image, mask_path)
        labels = labels_from_mask(mask, len(self.class_names) - 1, mask_path)
        return Sample(name=name, image=image, labels=labels, mask=mask)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.data.coco", description=(__doc__ or "").split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="COCO instances JSON -> semantic mask PNGs")
    convert.add_argument("annotations", help="instances_train2014.json or instances_val2014.json")
    convert.add_argument("out_dir", help="output folder, e.g. ROOT/mask/train2014")
    convert.add_argument("--images-dir", help="only convert images present in this folder")
    args = parser.parse_args(argv)
    try:
        n = convert_instances_to_masks(
            args.annotations, args.out_dir, args.images_dir, progress=True
        )
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {n} masks to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
