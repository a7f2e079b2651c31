"""An interrupted per-image stage resumes where it stopped."""

from pathlib import Path

import pytest

from wsss.config import RunConfig
from wsss.stages.context import Context, run_per_image


def test_per_image_stage_resumes_after_interruption(tmp_path):
    ctx = Context(cfg=RunConfig(), out=tmp_path, source=None, method=None)
    ids = [f"img{i}" for i in range(6)]
    calls = []
    interrupted = []

    def flaky(image_id: str, folder: Path) -> None:
        if image_id == "img3" and not interrupted:
            interrupted.append(image_id)
            raise KeyboardInterrupt
        calls.append(image_id)
        (folder / f"{image_id}.txt").write_text(image_id)

    with pytest.raises(KeyboardInterrupt):
        run_per_image(ctx, "out", ids, flaky)
    assert not (tmp_path / "out").exists()  # nothing final until the stage completes
    assert sorted(p.stem for p in (tmp_path / "out.partial").iterdir()) == ["img0", "img1", "img2"]
    calls.clear()
    run_per_image(ctx, "out", ids, flaky)
    assert calls == ["img3", "img4", "img5"]  # finished images are not recomputed
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == ids
    assert not (tmp_path / "out.partial").exists()
