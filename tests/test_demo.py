"""``python -m wsss.demo`` end to end: smoke training, ONNX export, real local Triton, client."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss import demo


def test_demo_trains_exports_serves_and_writes_the_overlay(tmp_path, cache_dir, capfd):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (no local Triton)")
    run, out = tmp_path / "run", tmp_path / "demo"
    assert demo.main(["--run", str(run), "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    printed = capfd.readouterr().out
    overlay = out / "chelsea_overlay.png"
    assert f"demo: overlay written to {overlay}" in printed
    assert "chelsea.jpg: 451x300 [cam_segment]" in printed  # the client's line
    photo = np.asarray(Image.open(out / "chelsea.jpg"))
    assert Image.open(overlay).size == (451, 300) and photo.shape == (300, 451, 3)
    assert np.asarray(Image.open(out / "chelsea_mask.png")).shape == (300, 451)
    (benchmark,) = out.glob("benchmark_*_overlay.png")
    assert f"demo: benchmark image overlay: {benchmark}" in printed
    demo.ensure_run(run, "smoke", quiet=True)  # trained: no second training
    assert capfd.readouterr().out == f"demo: using the trained run {run}\n"


def test_demo_reports_bad_checkpoints_as_one_error(tmp_path, capfd):
    """A run folder with checkpoints that are not checkpoints: one error line, status 1."""
    for name in demo.CHECKPOINTS:
        (tmp_path / name).write_bytes(b"not a checkpoint")
    assert demo.main(["--run", str(tmp_path), "--out", str(tmp_path / "demo")]) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "classifier.pt" in err
