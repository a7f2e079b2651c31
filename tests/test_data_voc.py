"""VOCSource on tiny VOC-layout folders built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.constants import VOC_CLASSES, voc_palette
from wsss.data.base import DatasetError
from wsss.data.voc import VOCSource, read_index_png, voc_key

IDS = ("2007_000032", "2007_000039", "2008_000002")


def _save_mask(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _masks() -> dict[str, np.ndarray]:
    """Three 6x8 masks: {aeroplane}, {person, dog} with an ignore border, {} (background)."""
    a = np.zeros((6, 8), np.uint8)
    a[1:4, 2:6] = 1
    b = np.zeros((6, 8), np.uint8)
    b[:, :3] = 15
    b[2:5, 5:8] = 12
    b[1, :] = 255
    c = np.zeros((6, 8), np.uint8)
    return dict(zip(IDS, (a, b, c), strict=True))


def make_voc(root: Path, mask_dir: str = "SegmentationClass") -> Path:
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    splits = root / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    for name, mask in _masks().items():
        image = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
        _save_mask(mask, root / mask_dir / f"{name}.png")
    (splits / "train.txt").write_text(f"{IDS[0]}  \n\n{IDS[1]}\t\n\n")
    (splits / "val.txt").write_text(f"{IDS[2]}\n")
    return root


def test_reads_images_masks_and_derives_labels(tmp_path):
    source = VOCSource(make_voc(tmp_path))
    assert source.class_names == VOC_CLASSES
    assert source.ids("train") == list(IDS[:2])
    assert source.splits() == ["train", "val"]
    sample = source.load(IDS[1])
    assert sample.image.shape == (6, 8, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, _masks()[IDS[1]])
    expected = np.zeros(20, np.float32)
    expected[[14, 11]] = 1  # person (15) and dog (12); 255 is not a class
    np.testing.assert_array_equal(sample.labels, expected)
    assert sample.saliency is None
    assert source.load(IDS[2]).labels.sum() == 0
    assert source.has_masks("train") and source.has_masks("val")


def test_palette_index_is_read_not_rgb(tmp_path):
    mask = _masks()[IDS[1]]
    _save_mask(mask, tmp_path / "p.png")
    np.testing.assert_array_equal(read_index_png(tmp_path / "p.png"), mask)
    # An RGB-coloured mask is mapped back through the colour map.
    Image.open(tmp_path / "p.png").convert("RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_index_png(tmp_path / "rgb.png"), mask)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="bad.png"):
        read_index_png(tmp_path / "bad.png")


def test_segmentation_class_aug_preferred(tmp_path):
    root = make_voc(tmp_path, mask_dir="SegmentationClassAug")
    _save_mask(np.full((6, 8), 3, np.uint8), root / "SegmentationClass" / f"{IDS[0]}.png")
    source = VOCSource(root)
    assert source.mask_dir.name == "SegmentationClassAug"
    assert source.load(IDS[0]).labels[0] == 1  # aeroplane from Aug, not bird from the other


@pytest.mark.parametrize("int_keys", [True, False])
def test_cls_labels_npy_int_and_str_keys(tmp_path, int_keys):
    root = make_voc(tmp_path)
    table = {}
    for k, name in enumerate(IDS):
        vector = np.zeros(20, np.float32)
        vector[k + 5] = 1
        table[int(name.replace("_", "")) if int_keys else name] = vector
    np.save(root / "cls_labels.npy", table)
    source = VOCSource(root)
    for k, name in enumerate(IDS):
        assert np.flatnonzero(source.load(name).labels).tolist() == [k + 5]


def test_cls_labels_npy_wrong_length(tmp_path):
    root = make_voc(tmp_path)
    np.save(root / "cls_labels.npy", {IDS[0]: np.zeros(5)})
    with pytest.raises(DatasetError, match="cls_labels.npy"):
        VOCSource(root).load(IDS[0])


def test_cls_labels_json_indices_and_names(tmp_path):
    root = make_voc(tmp_path)
    (root / "cls_labels.json").write_text(json.dumps({IDS[0]: [2, 20], IDS[1]: ["cat", "dog"]}))
    source = VOCSource(root)
    assert np.flatnonzero(source.load(IDS[0]).labels).tolist() == [1, 19]
    assert np.flatnonzero(source.load(IDS[1]).labels).tolist() == [7, 11]
    # An id absent from the file falls back to its mask.
    assert source.load(IDS[2]).labels.sum() == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ({IDS[0]: ["dgo"]}, "unknown class 'dgo'"),
        ({IDS[0]: [21]}, "out of range"),
        ({IDS[0]: "cat"}, "expected a list"),
    ],
)
def test_cls_labels_json_errors(tmp_path, content, message):
    root = make_voc(tmp_path)
    (root / "cls_labels.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=message) as err:
        VOCSource(root).load(IDS[0])
    assert "cls_labels.json" in str(err.value)


def test_voc_key():
    assert voc_key(2007000032) == "2007_000032"
    assert voc_key(np.int64(2011003276)) == "2011_003276"
    assert voc_key("2007_000032") == "2007_000032"


def test_saliency_and_classes_txt(tmp_path):
    root = make_voc(tmp_path)
    (root / "Saliency").mkdir()
    Image.fromarray(np.full((6, 8), 200, np.uint8)).save(root / "Saliency" / f"{IDS[0]}.png")
    names = ["background", *(f"c{i}" for i in range(20))]
    (root / "classes.txt").write_text("\n".join(names) + "\n\n")
    source = VOCSource(root)
    assert source.class_names == tuple(names)
    sample = source.load(IDS[0])
    assert sample.saliency.dtype == np.uint8 and (sample.saliency == 200).all()
    assert source.load(IDS[1]).saliency is None


def test_bad_classes_txt_names_file(tmp_path):
    root = make_voc(tmp_path)
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match=r"classes.txt:1"):
        VOCSource(root)


def test_missing_image_names_path_at_load(tmp_path):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / f"{IDS[0]}.jpg").unlink()
    source = VOCSource(root)  # construction does not touch the images
    with pytest.raises(DatasetError, match=f"JPEGImages/{IDS[0]}.jpg"):
        source.load(IDS[0])


def test_unknown_split_lists_available(tmp_path):
    source = VOCSource(make_voc(tmp_path))
    with pytest.raises(DatasetError, match=r"train_aug.txt.*available splits: train, val"):
        source.ids("train_aug")


def test_malformed_split_line_names_file_and_line(tmp_path):
    root = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "bad.txt").write_text(f"{IDS[0]}\n{IDS[1]} extra\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2"):
        VOCSource(root).ids("bad")


def test_two_column_split_list(tmp_path):
    root = make_voc(tmp_path)
    line = f"/JPEGImages/{IDS[0]}.jpg /SegmentationClassAug/{IDS[0]}.png\n"
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(line)
    assert VOCSource(root).ids("train_aug") == [IDS[0]]


def test_has_masks_false_when_one_is_missing(tmp_path):
    root = make_voc(tmp_path)
    (root / "SegmentationClass" / f"{IDS[1]}.png").unlink()
    source = VOCSource(root)
    assert not source.has_masks("train") and source.has_masks("val")
    with pytest.raises(DatasetError, match="no image-level labels"):
        source.load(IDS[1])


def test_mask_value_out_of_range(tmp_path):
    root = make_voc(tmp_path)
    _save_mask(np.full((6, 8), 30, np.uint8), root / "SegmentationClass" / f"{IDS[0]}.png")
    with pytest.raises(DatasetError, match="class index 30"):
        VOCSource(root).load(IDS[0])


def test_mask_size_mismatch(tmp_path):
    root = make_voc(tmp_path)
    _save_mask(np.zeros((3, 3), np.uint8), root / "SegmentationClass" / f"{IDS[0]}.png")
    with pytest.raises(DatasetError, match="differs from its image"):
        VOCSource(root).load(IDS[0])


def test_not_a_voc_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"not a VOC folder: .*JPEGImages is missing"):
        VOCSource(tmp_path)
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match=r"train.txt \(available splits: none\)"):
        VOCSource(tmp_path).ids("train")
    with pytest.raises(DatasetError, match="not found"):
        VOCSource(tmp_path / "nope")
