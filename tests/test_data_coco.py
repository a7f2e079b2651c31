"""COCO: RLE decoding (both forms), polygon rasterisation, the converter and COCOSource."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.base import DatasetError
from wsss.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCOSource,
    category_mapping,
    convert_instances_to_masks,
    main,
    polygons_to_mask,
    rle_counts_from_string,
    rle_decode,
)

# ----------------------------------------------------------------------------- reference encoder


def encode_counts(mask: np.ndarray) -> list[int]:
    """Reference RLE encoder: column-major runs, starting with a (possibly empty) run of 0s."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def counts_to_string(counts: list[int]) -> str:
    """Reference compressor, a transcription of maskApi.c ``rleToString``."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as for C's signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_compressed_string_hand_worked():
    # 5 -> '5'; 3 -> '3'; 40 = 8 + 1*32 -> chunks 8|0x20 ('X'), 1 ('1');
    # 4th count stored as 2 - 3 = -1 -> chunk 31 with the sign bit ('O').
    assert counts_to_string([5, 3, 40, 2]) == "53X1O"
    assert rle_counts_from_string("53X1O") == [5, 3, 40, 2]


def test_rle_decode_hand_made_mask():
    mask = np.array(
        [
            [0, 0, 1, 1],
            [0, 1, 1, 0],
            [0, 1, 0, 0],
        ],
        dtype=bool,
    )
    # column-major: col0 = 000, col1 = 011, col2 = 110, col3 = 100
    counts = [4, 4, 1, 1, 2]  # 0000 1111 0 1 00
    assert encode_counts(mask) == counts
    np.testing.assert_array_equal(rle_decode(counts, 3, 4), mask)
    np.testing.assert_array_equal(rle_decode(counts_to_string(counts), 3, 4), mask)
    first_one = np.ones((2, 2), bool)  # a mask starting with 1 begins with a 0-length run
    assert encode_counts(first_one) == [0, 4]
    np.testing.assert_array_equal(rle_decode([0, 4], 2, 2), first_one)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = 23, 41
    mask = np.zeros((h, w), bool)
    for _ in range(4):  # blobs give long runs (multi-chunk numbers) and negative deltas
        y, x = rng.integers(0, h), rng.integers(0, w)
        mask[y : y + rng.integers(1, 15), x : x + rng.integers(1, 30)] = True
    mask ^= rng.random((h, w)) < 0.05
    counts = encode_counts(mask)
    text = counts_to_string(counts)
    assert rle_counts_from_string(text) == counts
    np.testing.assert_array_equal(rle_decode(text, h, w), mask)
    np.testing.assert_array_equal(rle_decode(text.encode(), h, w), mask)


def test_rle_errors():
    with pytest.raises(DatasetError, match="sum to 5"):
        rle_decode([2, 3], 2, 3)
    with pytest.raises(DatasetError, match="ends inside"):
        rle_counts_from_string("X")


def test_polygon_rasterisation():
    square = polygons_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:4] = True  # pixel-edge coordinates: x in [1, 4), y in [1, 3)
    np.testing.assert_array_equal(square, expected)
    # Two polygons are united; parts outside the image are clipped.
    two = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [4, 3, 9, 3, 9, 9, 4, 9]], 5, 6)
    assert two[:2, :2].all() and two[3:, 4:].all() and two.sum() == 4 + 4
    # A right triangle covers about half of its box.
    tri = polygons_to_mask([[0, 0, 20, 0, 0, 20]], 20, 20)
    assert abs(int(tri.sum()) - 200) <= 20 and tri[0, 0] and not tri[19, 19]
    assert not polygons_to_mask([[1, 1, 2, 2]], 4, 4).any()  # degenerate


def test_class_tables():
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[0] == "background"
    assert len(set(COCO_CATEGORY_IDS)) == 80 and max(COCO_CATEGORY_IDS) == 90
    cats = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:], strict=True)]
    mapping = category_mapping(cats[::-1])
    assert mapping[1] == 1 and mapping[90] == 80 and mapping[13] == 12  # 12 is a gap


# ----------------------------------------------------------------------------- converter


def make_coco(root: Path) -> Path:
    """Annotations for two 8x10 images with categories 1 (person), 18 (dog), 90 (toothbrush)."""
    dog = np.zeros((8, 10), bool)
    dog[4:8, 5:9] = True
    crowd = np.zeros((8, 10), bool)
    crowd[0:2, :] = True
    crowd[0:3, 0:2] = True  # overlaps the person: the instance wins
    data = {
        "images": [
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 8, "width": 10},
            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": 8, "width": 10},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
        ],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 12.0,
             "segmentation": [[0, 2, 3, 2, 3, 6, 0, 6]]},
            {"id": 2, "image_id": 9, "category_id": 18, "iscrowd": 0, "area": 16.0,
             "segmentation": {"size": [8, 10], "counts": counts_to_string(encode_counts(dog))}},
            {"id": 3, "image_id": 9, "category_id": 90, "iscrowd": 1, "area": 24.0,
             "segmentation": {"size": [8, 10], "counts": encode_counts(crowd)}},
        ],
    }  # fmt: skip
    path = root / "instances_train2014.json"
    path.write_text(json.dumps(data))
    return path


def expected_mask() -> np.ndarray:
    mask = np.zeros((8, 10), np.uint8)
    mask[0:2, :] = 255
    mask[2, 0:2] = 255
    mask[2:6, 0:3] = 1  # person
    mask[4:8, 5:9] = 2  # dog, contiguous index of category 18
    return mask


def test_convert_and_read_back(tmp_path):
    ann = make_coco(tmp_path)
    out = tmp_path / "coco" / "mask" / "train2014"
    assert convert_instances_to_masks(ann, out) == 2
    got = np.asarray(Image.open(out / "COCO_train2014_000000000009.png"))
    assert Image.open(out / "COCO_train2014_000000000009.png").mode == "P"
    np.testing.assert_array_equal(got, expected_mask())
    assert not np.asarray(Image.open(out / "COCO_train2014_000000000025.png")).any()
    assert not list(out.glob("*.tmp"))

    images = tmp_path / "coco" / "train2014"
    images.mkdir()
    for stem in ("COCO_train2014_000000000009", "COCO_train2014_000000000025"):
        Image.new("RGB", (10, 8), (9, 9, 9)).save(images / f"{stem}.jpg")
    source = COCOSource(tmp_path / "coco")
    assert source.class_names == COCO_CLASSES
    assert source.ids("train") == source.ids("train2014")
    assert len(source.ids("train")) == 2
    sample = source.load("COCO_train2014_000000000009")
    assert sample.labels.shape == (80,) and np.flatnonzero(sample.labels).tolist() == [0, 1]
    assert source.has_masks("train")
    with pytest.raises(DatasetError, match=r"val2014 not found.*available splits: train"):
        source.ids("val")


def test_convert_only_images_present(tmp_path):
    ann = make_coco(tmp_path)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (10, 8)).save(tmp_path / "imgs" / "COCO_train2014_000000000025.jpg")
    n = convert_instances_to_masks(ann, tmp_path / "out", images_dir=tmp_path / "imgs")
    assert n == 1 and [p.name for p in (tmp_path / "out").iterdir()] == [
        "COCO_train2014_000000000025.png"
    ]


def test_cli_entry_point(tmp_path, capsys):
    ann = make_coco(tmp_path)
    assert main(["convert", str(ann), str(tmp_path / "cli")]) == 0
    assert "wrote 2 masks" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "missing.json"), str(tmp_path / "x")]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_missing_mask_names_file(tmp_path):
    (tmp_path / "val2014").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    source = COCOSource(tmp_path)
    assert not source.has_masks("val")
    with pytest.raises(DatasetError, match=r"mask/val2014/COCO_val2014_000000000001.png"):
        source.load("COCO_val2014_000000000001")
