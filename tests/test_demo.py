"""``python -m wsss.demo``: its steps in-process with the training replaced (stages asked for,
resume, photos, estimate, errors), and once end to end with a smoke run: ONNX export of the run
and of the imagenet source into one repository, a real local Triton, the client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss import demo
from wsss.constants import VOC_CLASSES
from wsss.imagenet import photos
from wsss.imagenet.photos import CHELSEA_BACKGROUND_BOX, CHELSEA_CAT_BOX, PhotoMissing, box_mask

CAT = VOC_CLASSES.index("cat")  # 8: the label of cat in the served label maps


def fake_training(calls: list, status: int = 0):
    """wsss.cli.main stand-in: records its arguments; writes the checkpoints when it succeeds."""

    def main(args):
        calls.append(args)
        if status == 0:
            out = args[args.index("--out") + 1]
            for name in demo.CHECKPOINTS:
                (Path(out) / name).write_bytes(b"")
        return status

    return main


def test_training_runs_only_the_stages_the_demo_serves(tmp_path, monkeypatch, capsys):
    from wsss.pipeline import STAGE_NAMES

    calls = []
    monkeypatch.setattr("wsss.cli.main", fake_training(calls))
    demo.ensure_run(tmp_path, "smoke", quiet=True)
    (args,) = calls
    assert args[:2] == ["cam", "--data"] and args[args.index("--out") + 1] == str(tmp_path)
    stages = args[args.index("--stages") + 1].split(",")
    assert stages == ["cls", "cam", "pseudo", "seg"] and set(stages) <= set(STAGE_NAMES)
    assert args[args.index("--set") + 1] == "seg.upper_bound=false" and "--quiet" in args
    assert "stages cls,cam,pseudo,seg" in capsys.readouterr().out
    demo.ensure_run(tmp_path, "smoke", quiet=False)  # trained: no second training
    assert len(calls) == 1
    assert capsys.readouterr().out == f"demo: using the trained run {tmp_path}\n"


def test_interrupted_and_failed_training(tmp_path, monkeypatch, capfd):
    """Ctrl-C in training: status 130 and only the training's own line (how to resume); a
    failed training: one error line, status 1."""
    monkeypatch.setattr("wsss.cli.main", fake_training([], status=130))
    assert demo.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 130
    assert capfd.readouterr().err == ""
    monkeypatch.setattr("wsss.cli.main", fake_training([], status=2))
    assert demo.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 1
    err = capfd.readouterr().err
    assert err == f"error: training into {tmp_path / 'run'} failed (exit status 2)\n"


def test_photos_are_written_as_jpegs_and_a_missing_package_is_a_note(tmp_path, monkeypatch, capsys):
    def missing():
        raise PhotoMissing("quokka.jpg: package imgaug is not installed (pip install ...)")

    quokka = photos.photo("quokka")
    replaced = tuple(
        photos.Photo(p.name, missing, p.source) if p is quokka else p for p in photos.PHOTOS
    )
    monkeypatch.setattr(photos, "PHOTOS", replaced)
    written = demo.write_photos(tmp_path)
    assert [p.name for p in written] == ["chelsea.jpg", "coffee.jpg", "motorcycle.jpg",
                                         "grace_hopper.jpg"]  # fmt: skip
    sizes = [Image.open(p).size for p in written]
    assert sizes == [(451, 300), (600, 400), (741, 500), (512, 600)]  # motorcycle: left image
    printed = capsys.readouterr().out.splitlines()
    chelsea = f"demo:   {tmp_path / 'chelsea.jpg'}: scikit-image data.chelsea; a person sees cat"
    assert printed[0] == chelsea and len(printed) == 5
    note = "quokka.jpg: package imgaug is not installed (pip install ...)"
    assert printed[-1] == f"demo:   skipped quokka: {note}"


def test_estimate_says_what_applies(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "MEASURED_MINUTES", {"default": (12.4, 0.6)})
    fresh = demo.estimate(tmp_path, "default")
    assert fresh.startswith("this takes about 12 minutes on an idle 2-core CPU (default preset:")
    assert f"under a minute once {tmp_path} is trained" in fresh
    for name in demo.CHECKPOINTS:
        (tmp_path / name).write_bytes(b"")
    assert demo.estimate(tmp_path, "default").startswith(
        "this takes under a minute on an idle 2-core"
    )
    assert demo.estimate(tmp_path, "gpu").startswith("the 'gpu' preset's training time was not")


def test_demo_reports_bad_checkpoints_as_one_error(tmp_path, capfd):
    """A run folder with checkpoints that are not checkpoints: one error line, status 1."""
    for name in demo.CHECKPOINTS:
        (tmp_path / name).write_bytes(b"not a checkpoint")
    assert demo.main(["--run", str(tmp_path), "--out", str(tmp_path / "demo")]) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "classifier.pt" in err


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """(run, out, stdout) of ``python -m wsss.demo --preset smoke``, as ``make demo`` runs it.

    Skips when the Triton binary cannot be had or cannot start here, or the ImageNet weights
    are not installed (like tests/test_serving.py's ``triton`` fixture).
    """
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (no local Triton)")
    from wsss.serving.bundle import BundleError, find_bundle

    try:
        find_bundle()
    except BundleError as exc:
        pytest.skip(f"no usable Triton binary: {exc}")
    if reason := demo.imagenet_missing():
        pytest.skip(f"no imagenet source: {reason}")
    root = tmp_path_factory.mktemp("demo")
    run, out = root / "run", root / "demo"
    command = [sys.executable, "-m", "wsss.demo", "--run", str(run), "--preset", "smoke"]
    done = subprocess.run(
        command + ["--out", str(out), "--quiet"], capture_output=True, text=True, cwd=demo.ROOT
    )
    if done.returncode != 0 and "tritonserver" in done.stderr and "start-up" in done.stderr:
        pytest.skip(f"Triton cannot start here: {done.stderr.splitlines()[0]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run, out, done.stdout


def test_demo_trains_exports_serves_and_segments_the_photos(finished):
    run, out, printed = finished
    lines = printed.splitlines()
    assert lines[0].startswith("demo: ") and f"once {run} is trained" in lines[0]  # estimate
    steps = [line.split("] ")[1] for line in lines if line.startswith("demo: [")]
    assert [s.split()[0] for s in steps] == ["training", "exporting", "writing", "starting",
                                             "segmenting"]  # fmt: skip
    assert "demo:   endpoints: cam_segment, cam_cam, imagenet_segment, imagenet_cam" in lines
    # the client's line for each image: classes found
    for name, size in [("chelsea", "451x300"), ("coffee", "600x400"), ("motorcycle", "741x500"),
                       ("grace_hopper", "512x600"), ("quokka", "960x643")]:  # fmt: skip
        assert f"{out / name}.jpg: {size} [imagenet_segment] " in printed
    assert f"{out / 'chelsea.jpg'}: 451x300 [cam_segment] " in printed
    (benchmark,) = out.glob("benchmark_*.jpg")
    assert f"{benchmark}: 64x64 [cam_segment] " in printed
    done = next(i for i, line in enumerate(lines) if line.startswith("demo: done in"))
    overlays = [line.split(": ", 1)[1] for line in lines[done + 1 :]]
    expected = [f"imagenet: {out / 'imagenet' / n}_overlay.png" for n in demo.PHOTO_NAMES]
    expected += [f"cam: {out / 'cam' / n}_overlay.png" for n in ("chelsea", benchmark.stem)]
    assert [o.strip() for o in overlays] == expected
    overlay = Image.open(out / "imagenet" / "chelsea_overlay.png")
    assert overlay.width == 902 and overlay.height > 600  # enlarged to 384 px, legend below
    # only the served stages ran: no evaluation, no upper bound
    assert not (run / "report.json").exists() and not (run / "upper_bound.pt").exists()
    assert sorted(json.loads((run / "timings.json").read_text())) == sorted(demo.TRAIN_STAGES)


def test_demo_imagenet_step_labels_the_cat_as_cat(finished):
    """The served label map of chelsea: the cat box is cat, the background box is not."""
    _, out, _ = finished
    labels = np.asarray(Image.open(out / "imagenet" / "chelsea_mask.png"))
    assert labels.shape == (300, 451)
    inside = labels[box_mask(labels.shape, CHELSEA_CAT_BOX)]
    outside = labels[box_mask(labels.shape, CHELSEA_BACKGROUND_BOX)]
    assert np.mean(inside == CAT) >= 0.9, np.bincount(inside)
    assert np.mean(outside == CAT) <= 0.1, np.bincount(outside)


def test_an_interrupted_demo_resumes_its_training(finished, tmp_path, capsys):
    """A run stopped after its cls stage (no deeplab.pt, no report.json): the demo trains only
    what is missing; a whole run is used as it is."""
    run, _, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "deeplab.pt").unlink()
    shutil.rmtree(copy / "pseudo")
    classifier = (copy / "classifier.pt").stat().st_mtime_ns
    demo.ensure_run(copy, "smoke", quiet=True)
    assert (copy / "deeplab.pt").is_file() and (copy / "pseudo").is_dir()
    assert (copy / "classifier.pt").stat().st_mtime_ns == classifier  # not trained again
    assert not (copy / "report.json").exists()
    capsys.readouterr()
    demo.ensure_run(copy, "smoke", quiet=True)
    assert capsys.readouterr().out == f"demo: using the trained run {copy}\n"


def test_without_the_imagenet_weights_the_trained_network_is_shown(
    finished, tmp_path, monkeypatch, capfd
):
    run, _, _ = finished
    monkeypatch.setattr(demo, "imagenet_missing", lambda: "the checkpoint is not installed")
    assert demo.main(["--run", str(run), "--out", str(tmp_path), "--preset", "smoke"]) == 0
    printed = capfd.readouterr().out
    assert (
        "demo: no imagenet endpoint (only the trained network is shown): the checkpoint" in printed
    )
    assert "demo:   endpoints: cam_segment, cam_cam\n" in printed
    assert "[imagenet_segment]" not in printed and not (tmp_path / "imagenet").exists()
    assert f"{tmp_path / 'chelsea.jpg'}: 451x300 [cam_segment] " in printed
    assert (tmp_path / "cam" / "chelsea_overlay.png").is_file()
