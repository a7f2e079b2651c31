"""End-to-end runs of ``train/run.py`` on the smoke preset, and the CLI's error contract."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.checkpoint import CheckpointError, load_classifier, load_deeplab
from wsss.cli import main
from wsss.constants import voc_palette
from wsss.io import load_label_png

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {
    "method", "dataset", "seed_miou", "seed_miou_best_gt_assisted", "pseudo_miou",
    "pseudo_miou_threshold", "pseudo_miou_crf", "seg_miou", "seg_crf_miou", "per_class_iou",
    "stage_seconds",
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("run") / "cam-smoke"
    assert (
        main(["cam", "--data", "synthetic", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    )
    return out


def test_smoke_run_writes_report_and_checkpoints(smoke_run):
    report = json.loads((smoke_run / "report.json").read_text())
    assert report.keys() >= REPORT_KEYS
    assert report["method"] == "cam" and report["dataset"] == "synthetic"
    assert set(report["stage_seconds"]) >= {"cls", "cam", "pseudo", "seg", "upper", "eval"}
    for key in ("seed_miou", "pseudo_miou", "seg_miou", "upper_bound_miou"):
        assert 0.0 <= report[key] <= 100.0
    model, meta = load_classifier(smoke_run / "classifier.pt")
    assert meta["method"] == "cam" and meta["class_names"][0] == "background"
    assert model.num_classes == len(meta["class_names"]) - 1
    deeplab, meta = load_deeplab(smoke_run / "deeplab.pt")
    assert deeplab.num_classes == len(meta["class_names"])
    assert (smoke_run / "figures" / "cams.png").exists()
    with pytest.raises(CheckpointError, match="is a deeplab checkpoint"):
        load_classifier(smoke_run / "deeplab.pt")


def test_second_run_skips_finished_stages(smoke_run, caplog):
    before = (smoke_run / "timings.json").read_text()
    assert main(["cam", "--preset", "smoke", "--out", str(smoke_run), "--quiet"]) == 0
    assert (smoke_run / "timings.json").read_text() == before
    assert "skipped" in caplog.text


def test_forcing_a_stage_reruns_it_and_later_ones(smoke_run):
    args = ["cam", "--preset", "smoke", "--out", str(smoke_run), "--quiet"]
    assert main([*args, "--stages", "pseudo,eval", "--force"]) == 0
    timings = json.loads((smoke_run / "timings.json").read_text())
    assert {"pseudo", "eval"} <= timings.keys()


def test_a_rerun_trains_identical_networks(smoke_run, tmp_path):
    """The seed covers the new layers' initialisation too: same config -> same weights."""
    run = tmp_path / "rerun"
    stages = ["--stages", "cls,cam,pseudo,seg"]
    assert main(["cam", "--preset", "smoke", "--out", str(run), "--quiet", *stages]) == 0
    for name in ("classifier.pt", "deeplab.pt"):
        first = torch.load(smoke_run / name, weights_only=False)["state_dict"]
        second = torch.load(run / name, weights_only=False)["state_dict"]
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name


def test_upper_bound_is_trained_once_and_shared(smoke_run, tmp_path, caplog):
    run = tmp_path / "again"
    args = ["cam", "--preset", "smoke", "--out", str(run), "--quiet", "--stages", "upper"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert (run / "upper_bound.pt").read_bytes() == (smoke_run / "upper_bound.pt").read_bytes()
    assert "upper bound: reusing" in caplog.text


def test_torch_crf_pseudo_masks_agree_with_pydensecrf(smoke_run, tmp_path):
    """``--set crf.impl=torch`` reruns the CRF stages with the PyTorch CRF: same masks."""
    reference = {p.name: load_label_png(p) for p in (smoke_run / "pseudo").glob("*.png")}
    run = tmp_path / "torch-crf"
    shutil.copytree(smoke_run, run)
    args = ["cam", "--preset", "smoke", "--out", str(run), "--quiet", "--stages", "pseudo"]
    assert main([*args, "--force", "--set", "crf.impl=torch", "--set", "crf.device=cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["crf"]["impl"] == "torch"
    agree = total = 0
    for name, ref in reference.items():
        ours = load_label_png(run / "pseudo" / name)
        agree, total = agree + int((ours == ref).sum()), total + ref.size
    assert reference and agree / total >= 0.99


def _write_voc(root: Path, n: int = 12) -> None:
    """A tiny dataset in the PASCAL VOC 2012 layout with VOC's 21 classes."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(n)]
    for i, name in enumerate(names):
        image = rng.integers(0, 60, size=(48, 64, 3), dtype=np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        cls = (8, 12)[i % 2]  # cat, dog
        y, x = rng.integers(4, 20), rng.integers(4, 30)
        mask[y : y + 20, x : x + 24] = cls
        mask[y, x : x + 24] = 255
        image[mask == cls] = (200, 120, 40) if cls == 8 else (40, 200, 120)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(root / "SegmentationClass" / f"{name}.png")
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("\n".join(names[:8]) + "\n")
    (seg / "val.txt").write_text("\n".join(names[8:]) + "\n")


def test_voc_layout_smoke(tmp_path):
    root = tmp_path / "VOC2012"
    _write_voc(root)
    out = tmp_path / "run"
    args = ["cam", "--data", "voc", "--root", str(root), "--preset", "smoke", "--out", str(out)]
    assert main([*args, "--quiet", "--set", "seg.upper_bound=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "voc" and len(report["class_names"]) == 21
    assert "upper_bound_miou" not in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["nomethod"], "unknown method 'nomethod'"),
        (["cam", "--data", "voc"], "--data voc needs --root DIR"),
        (["cam", "--set", "cls.bogus=1"], "unknown config key 'cls.bogus'"),
        (["cam", "--stages", "cls,nope"], "unknown stage 'nope'"),
        (["cam", "--set", "crf.impl=fast"], "unknown crf.impl 'fast'"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_voc_root_names_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["cam", "--data", "voc", "--root", str(tmp_path / "empty"), "--preset", "smoke"]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train" in err and err.startswith("error:")


def test_help_lists_methods_datasets_presets(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("cam", "synthetic", "voc", "coco", "folder", "smoke", "default", "paper", "--set"):
        assert word in text


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, cache_dir):
    """The same command under torchrun (gloo, 2 CPU processes) trains and writes CAMs."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", str(ROOT / "train" / "run.py"), "cam", "--preset", "smoke",
           "--out", str(out), "--quiet", "--stages", "cls,cam"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WSSS_CACHE": str(cache_dir)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "classifier.pt").exists()
    n_train = len(list((out / "cams").glob("*.npz")))
    assert n_train > 0


def test_load_context_reads_the_method_section_back(tmp_path, cache_dir):
    """A run's config.json gives back the method's own dataclass (KTSE checks its fields when
    built), so the probes that reopen a run see the constants it was trained with."""
    from wsss.cli import build_config, build_parser
    from wsss.config import to_dict
    from wsss.io import atomic_write_json
    from wsss.methods.ktse import KTSEConfig
    from wsss.pipeline import load_context

    args = ["ktse", "--preset", "smoke", "--set", "method.global_space=probability"]
    cfg = build_config(build_parser().parse_args([*args, "--set", "method.erase_threshold=0.8"]))
    atomic_write_json(to_dict(cfg), tmp_path / "config.json")
    method_config = load_context(tmp_path).method.config
    assert isinstance(method_config, KTSEConfig)
    assert (method_config.global_space, method_config.erase_threshold) == ("probability", 0.8)
