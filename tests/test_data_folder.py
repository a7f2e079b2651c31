"""FolderSource: a user's images with a CSV or JSON of image-level labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.base import DatasetError
from wsss.data.folder import FolderSource


def make_images(folder: Path, names=("a.jpg", "b.png", "c.jpeg", "d.webp")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(folder / name)
    return folder


def write_csv(root: Path, text: str, name: str = "labels.csv") -> Path:
    (root / name).write_text(text)
    return root / name


def test_csv_names_separators_and_default_splits(tmp_path):
    make_images(tmp_path / "images")
    write_csv(
        tmp_path, 'image,labels\na.jpg,dog;person\nb,cat person\nc.jpeg,\n\nd.webp,"cat,dog"\n'
    )
    source = FolderSource(tmp_path)
    assert source.class_names == ("background", "cat", "dog", "person")
    assert source.ids("train") == ["a", "b", "c", "d"] == source.ids("val")
    assert source.load("a").labels.tolist() == [0, 1, 1]
    assert source.load("b").labels.tolist() == [1, 0, 1]
    assert source.load("c").labels.tolist() == [0, 0, 0]
    assert source.load("d").labels.tolist() == [1, 1, 0]
    sample = source.load("b")
    assert sample.image.shape == (5, 7, 3) and sample.mask is None
    assert not source.has_masks("train")


def test_csv_split_column_and_images_in_root(tmp_path):
    make_images(tmp_path, ("a.jpg", "b.png", "extra.bmp"))
    write_csv(tmp_path, "image,labels,split\na.jpg,dog,train\nb.png,cat,val\n")
    source = FolderSource(tmp_path)
    assert source.ids("train") == ["a"] and source.ids("val") == ["b"]
    with pytest.raises(DatasetError, match=r"unknown split 'test'.*available: train, val"):
        source.ids("test")


def test_csv_unknown_class_names_file_and_line(tmp_path):
    make_images(tmp_path / "images")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    write_csv(tmp_path, "image,labels\na.jpg,dog\nb.png,cat\nc.jpeg,dgo\n")
    with pytest.raises(DatasetError, match=r"labels.csv:4: unknown class 'dgo'"):
        FolderSource(tmp_path)


def test_csv_indices_need_a_class_list(tmp_path):
    make_images(tmp_path / "images")
    write_csv(tmp_path, "image,labels\na.jpg,1;2\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: class index 1 needs a class list"):
        FolderSource(tmp_path)
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    assert FolderSource(tmp_path).load("a").labels.tolist() == [1, 1]
    write_csv(tmp_path, "image,labels\na.jpg,3\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: class index 3 out of range"):
        FolderSource(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,labels\na.jpg,cat\n", r"labels.csv:1: expected a header"),
        ("image,labels\na.jpg,cat\nzzz.jpg,cat\n", r"labels.csv:3: image file not found: .*zzz"),
        ("image,labels\na.jpg,cat\na.jpg,dog\n", r"labels.csv:3: image 'a.jpg' is listed twice"),
        ("image,labels,split\na.jpg,cat,\n", r"labels.csv:2: empty split"),
        ("image,labels\na.jpg,background\n", r"labels.csv:2: 'background' is not"),
        ("image,labels\na.jpg,cat,dog\n", r"labels.csv:2: 3 cells"),
    ],
)
def test_csv_malformed(tmp_path, text, message):
    make_images(tmp_path / "images")
    write_csv(tmp_path, text)
    with pytest.raises(DatasetError, match=message):
        FolderSource(tmp_path)


def test_json_with_classes_and_splits(tmp_path):
    make_images(tmp_path / "images")
    data = {
        "classes": ["person", "dog", "cat"],
        "labels": {"a.jpg": ["dog"], "b.png": ["cat", "person"], "c": []},
        "splits": {"train": ["a.jpg", "b"], "val": ["c.jpeg"]},
    }
    (tmp_path / "labels.json").write_text(json.dumps(data))
    source = FolderSource(tmp_path)
    assert source.class_names == ("background", "person", "dog", "cat")
    assert source.ids("train") == ["a", "b"] and source.ids("val") == ["c"]
    assert source.load("b").labels.tolist() == [1, 0, 1]


def test_json_plain_mapping_and_explicit_labels_file(tmp_path):
    make_images(tmp_path / "images")
    (tmp_path / "my.json").write_text(json.dumps({"a.jpg": ["zebra"], "d.webp": ["ant"]}))
    source = FolderSource(tmp_path, labels_file="my.json")
    assert source.class_names == ("background", "ant", "zebra")
    assert source.ids("val") == ["a", "d"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"classes": ["cat"], "labels": {"a.jpg": ["dgo"]}}', r"labels.json: .*'a.jpg'.*'dgo'"),
        ('{"a.jpg": "cat"}', r"labels.json: .*expected a list"),
        ('{"a.jpg": ["cat"],\n "b.png": [cat]}', r"labels.json:2: invalid JSON"),
        ('{"labels": {"a.jpg": []}, "splits": {"train": ["q"]}}', r"'q' has no labels"),
    ],
)
def test_json_malformed(tmp_path, text, message):
    make_images(tmp_path / "images")
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(DatasetError, match=message):
        FolderSource(tmp_path)


def test_masks_and_saliency(tmp_path):
    make_images(tmp_path / "images", ("a.jpg", "b.png"))
    write_csv(tmp_path, "image,labels\na.jpg,cat\nb.png,dog\n")
    (tmp_path / "masks").mkdir()
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 1:4] = 1
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    source = FolderSource(tmp_path)
    np.testing.assert_array_equal(source.load("a").mask, mask)
    assert not source.has_masks("train")
    Image.fromarray(mask).save(tmp_path / "masks" / "b.png")
    assert source.has_masks("train")
    (tmp_path / "saliency").mkdir()
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(tmp_path / "saliency" / "a.png")
    assert source.load("a").saliency.max() == 9
    Image.fromarray(np.full((5, 7), 7, np.uint8)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(DatasetError, match=r"b.png: class index 7 out of range"):
        source.load("b")


def test_missing_labels_file_and_folder(tmp_path):
    make_images(tmp_path / "images")
    with pytest.raises(DatasetError, match="labels.csv or labels.json"):
        FolderSource(tmp_path)
    with pytest.raises(DatasetError, match="labels file not found"):
        FolderSource(tmp_path, labels_file="nope.csv")
    with pytest.raises(DatasetError, match="dataset folder not found"):
        FolderSource(tmp_path / "nope")
