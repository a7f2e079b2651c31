"""The built-in synthetic benchmark: determinism, VOC layout, ground-truth properties."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data import build_source
from wsss.data.base import DatasetError
from wsss.data.synthetic import (
    CONTEXT_DIR,
    DONE_MARKER,
    METADATA_FILE,
    PART,
    RAILS,
    SYNTHETIC_CLASSES,
    WATER,
    SyntheticConfig,
    describe,
    ensure_synthetic,
    render_image,
)
from wsss.data.voc import VOCSource

CFG = SyntheticConfig(seed=3, image_size=64, n_train=60, n_val=12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return ensure_synthetic(CFG, tmp_path_factory.mktemp("cache"))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic_bytes(dataset, tmp_path):
    small = SyntheticConfig(seed=3, image_size=40, n_train=12, n_val=4)
    a = _files(ensure_synthetic(small, tmp_path / "a"))
    b = _files(ensure_synthetic(small, tmp_path / "b"))
    assert a.keys() == b.keys() and len(a) > 4 * 16
    assert all(a[k] == b[k] for k in a)
    other = ensure_synthetic(SyntheticConfig(seed=4, image_size=40, n_train=12, n_val=4), tmp_path)
    assert other.name != dataset.name
    assert (other / "JPEGImages" / "train_00000.jpg").read_bytes() != a[
        "JPEGImages/train_00000.jpg"
    ]


def test_layout_and_cache_reuse(dataset):
    assert dataset.name == f"synthetic-{CFG.key()}"
    for sub in ("JPEGImages", "SegmentationClass", "Saliency", CONTEXT_DIR):
        assert len(list((dataset / sub).iterdir())) == CFG.n_train + CFG.n_val
    assert (dataset / DONE_MARKER).is_file()
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    meta = json.loads((dataset / METADATA_FILE).read_text())
    assert meta["config"]["seed"] == 3 and meta["class_names"] == list(SYNTHETIC_CLASSES)
    stamp = (dataset / DONE_MARKER).stat().st_mtime_ns
    assert ensure_synthetic(CFG, dataset.parent) == dataset
    assert (dataset / DONE_MARKER).stat().st_mtime_ns == stamp  # skipped, not regenerated
    mask = Image.open(dataset / "SegmentationClass" / "train_00000.png")
    assert mask.mode == "P"


def test_voc_reader_reads_it_back(dataset):
    source = VOCSource(dataset)
    assert source.class_names == SYNTHETIC_CLASSES and len(SYNTHETIC_CLASSES) == 11
    assert {"boat", "train"} <= set(SYNTHETIC_CLASSES)
    assert len(source.ids("train")) == 60 and len(source.ids("val")) == 12
    assert source.has_masks("train") and source.has_masks("val")
    sample = source.load("val_00003")
    assert sample.image.shape == (64, 64, 3) and sample.mask.shape == (64, 64)
    assert sample.saliency.shape == (64, 64) and sample.saliency.dtype == np.uint8
    assert sample.labels.shape == (10,)


def test_labels_are_the_classes_in_the_mask(dataset):
    source = VOCSource(dataset)
    seen = np.zeros(10)
    n_multi = 0
    for name in source.ids("train") + source.ids("val"):
        sample = source.load(name)
        present = set(np.unique(sample.mask).tolist()) - {0, 255}
        assert set((np.flatnonzero(sample.labels) + 1).tolist()) == present
        assert 1 <= len(present) <= 3
        n_multi += len(present) > 1
        seen += sample.labels if name.startswith("train") else 0
    assert (seen > 0).all()  # every class appears in the training split
    assert n_multi >= 10  # multi-class images are common


def test_context_is_background_and_cooccurs(dataset):
    source = VOCSource(dataset)
    boat, train = SYNTHETIC_CLASSES.index("boat"), SYNTHETIC_CLASSES.index("train")
    water_given_boat, rails_given_train = [], []
    for name in source.ids("train"):
        sample = source.load(name)
        context = np.asarray(Image.open(dataset / CONTEXT_DIR / f"{name}.png"))
        assert (sample.mask[(context == WATER) | (context == RAILS)] == 0).all()
        assert (sample.mask[context == PART] > 0).all()  # parts lie on objects
        if sample.labels[boat - 1]:
            water_given_boat.append((context == WATER).any())
        if sample.labels[train - 1]:
            rails_given_train.append((context == RAILS).any())
    assert np.mean(water_given_boat) >= 0.7 and np.mean(rails_given_train) >= 0.7
    stats = json.loads((dataset / METADATA_FILE).read_text())["stats"]["train"]
    assert stats["water_without_boat"] < 0.2 and stats["rails_without_train"] < 0.2
    assert 0.04 <= stats["mean_part_fraction"] <= 0.13


def test_ignore_band_and_saliency(dataset):
    source = VOCSource(dataset)
    on_objects, off_objects = [], []
    for name in source.ids("train")[:20]:
        sample = source.load(name)
        assert (sample.mask == 255).any()  # 1 px border band
        fg = (sample.mask > 0) & (sample.mask < 255)
        on_objects.append(sample.saliency[fg].mean())
        off_objects.append(sample.saliency[sample.mask == 0].mean())
    assert np.mean(on_objects) > 3 * np.mean(off_objects)


def test_render_options():
    cfg = SyntheticConfig(image_size=(40, 56), ignore_border=0, aspect_jitter=0.2, n_train=1)
    item = render_image(cfg, "train", 0, first_class=2)
    h, w = item["mask"].shape
    assert h == 40 and w != 56 and item["image"].shape == (h, w, 3)
    assert not (item["mask"] == 255).any()
    assert 2 in item["info"]["drawn"]
    strict = SyntheticConfig(image_size=40, context_prob=1.0, max_objects=1)
    assert render_image(strict, "train", 0, first_class=2)["info"]["water"]


def test_invalid_config(tmp_path):
    with pytest.raises(DatasetError, match="image_size"):
        ensure_synthetic(SyntheticConfig(image_size=8), tmp_path)


def test_build_source(dataset, tmp_path):
    source = build_source("synthetic", None, synthetic=CFG, cache_dir=dataset.parent)
    assert isinstance(source, VOCSource) and source.root == dataset
    with pytest.raises(DatasetError, match="--data voc needs --root DIR"):
        build_source("voc", None)
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        build_source("imagenet", str(tmp_path))


def test_describe_mentions_the_problems():
    text = describe()
    assert "co-occur" in text and "boat" in text and "under-activate" in text


def test_wsss_data_does_not_import_torch():
    code = "import sys, wsss.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hue_jitter_rotates_hue_and_keeps_the_other_draws():
    import colorsys

    from wsss.data.transforms import color_jitter, shift_hue

    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (4, 5, 3))
    shifted = shift_hue(rgb, 0.1)
    for pixel, out in zip(rgb.reshape(-1, 3), shifted.reshape(-1, 3), strict=True):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        assert np.allclose(out, colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v))
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    plain = color_jitter(image, 0.3, np.random.default_rng(3))
    assert np.array_equal(plain, color_jitter(image, 0.3, np.random.default_rng(3), hue=0.0))
    assert not np.array_equal(plain, color_jitter(image, 0.3, np.random.default_rng(3), hue=0.1))


def test_soft_maps_can_be_resized_smoothly():
    from wsss.data.transforms import resize

    image = np.zeros((4, 4, 3), np.uint8)
    ramp = np.tile(np.array([0, 85, 170, 255], np.uint8), (4, 1))
    _, nearest = resize(image, ramp, (8, 8))
    _, bicubic = resize(image, ramp, (8, 8), "bicubic")
    assert set(np.unique(nearest)) <= {0, 85, 170, 255}  # labels keep their values
    assert len(np.unique(bicubic)) > 4  # a saliency ramp stays a ramp
