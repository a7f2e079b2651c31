"""``make demo``: train the CAM baseline, export it, serve it, segment one real photo.

    python -m wsss.demo [--run runs/demo-cam] [--preset default] [--out DIR] [--no-crf]

1. trains ``cam`` on the built-in benchmark into ``--run`` (``train/run.py cam --preset ...``;
   finished stages are skipped, an interrupted run resumes; a run that already holds
   ``classifier.pt`` and ``deeplab.pt`` is used as it is, without training);
2. exports both networks to ONNX (parity-checked) into ``OUT/model_repository`` with the shared
   models and the ensembles;
3. starts the local Triton server on free loopback ports;
4. writes scikit-image's bundled photo ``chelsea`` to ``OUT/chelsea.jpg`` and segments it with
   ``client/segment.py`` (mask and overlay PNGs in ``OUT``), together with one validation image
   of the benchmark the run was trained on (the networks only know the benchmark's classes: the
   real photo shows the served path, the benchmark image what the model learnt);
5. stops the server and prints where the overlay is.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client" / "segment.py"
PHOTO = "chelsea"
CHECKPOINTS = ("classifier.pt", "deeplab.pt")


def write_photo(path: Path, name: str = PHOTO) -> Path:
    """scikit-image's bundled photo ``name`` written as a JPEG file (chelsea: 451x300)."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, "JPEG", quality=92)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def ensure_run(run: Path, preset: str, quiet: bool) -> None:
    """Trains the CAM baseline into ``run`` unless both checkpoints are already there."""
    if all((run / name).is_file() for name in CHECKPOINTS):
        print(f"demo: using the trained run {run}", flush=True)
        return
    from wsss.cli import main

    print(f"demo: training cam ({preset} preset) into {run}", flush=True)
    # The fully supervised upper bound is a benchmark figure; the demo serves the two networks.
    args = ["cam", "--data", "synthetic", "--preset", preset, "--out", str(run)]
    args += ["--set", "seg.upper_bound=false"]
    if main(args + (["--quiet"] if quiet else [])) != 0:
        raise RuntimeError(f"training into {run} failed")


def _largest_object_share(mask) -> float:
    """Share of the pixels taken by the largest class; mask uint8 [H, W] (0 bg, 255 ignore)."""
    counts = np.bincount(mask[(mask > 0) & (mask != 255)], minlength=2)
    return float(counts.max() / mask.size)


def benchmark_image(run: Path, out: Path) -> Path:
    """A validation image of the run's dataset with a large object (the first where one class
    covers at least 20 % of the image, else the first), copied to ``out`` as a JPEG file."""
    import shutil

    from wsss.pipeline import load_context

    ctx = load_context(run)
    ids = ctx.ids(ctx.cfg.data.val_split)
    image_id = next(
        (i for i in ids[:50] if _largest_object_share(ctx.source.load(i).mask) >= 0.2), ids[0]
    )
    target = out / f"benchmark_{image_id}.jpg"
    shutil.copyfile(ctx.source.root / "JPEGImages" / f"{image_id}.jpg", target)
    return target


def segment_photo(server, photos: list[Path], out: Path, crf: bool) -> int:
    """Runs ``client/segment.py`` on ``photos`` against ``server``; returns its exit status."""
    command = [
        sys.executable,
        str(CLIENT),
        *map(str, photos),
        "--url",
        server.http_url,
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command + ([] if crf else ["--no-crf"]), env=env).returncode


def run_demo(
    run: Path, out: Path, preset: str = "default", crf: bool = True, quiet: bool = False
) -> Path:
    """The whole demo; returns the overlay PNG. Raises RuntimeError when a step fails."""
    from wsss.export.ensembles import repository_from_run
    from wsss.serving.server import TritonServer

    ensure_run(run, preset, quiet)
    repository = out / "model_repository"
    method = repository_from_run(run, repository, say=lambda line: None)
    print(f"demo: exported {method} to {repository}", flush=True)
    photo = write_photo(out / f"{PHOTO}.jpg")
    benchmark = benchmark_image(run, out)
    with TritonServer(repository, 0, 0, 0) as server:
        print(f"demo: Triton ready on HTTP {server.http_url}, gRPC {server.grpc_url}", flush=True)
        status = segment_photo(server, [photo, benchmark], out, crf)
    overlay = out / f"{photo.stem}_overlay.png"
    if status != 0 or not overlay.is_file():
        raise RuntimeError(f"client/segment.py failed (exit status {status})")
    print(f"demo: overlay written to {overlay}", flush=True)
    print(f"demo: benchmark image overlay: {out / f'{benchmark.stem}_overlay.png'}", flush=True)
    return overlay


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.demo",
        description="Train the CAM baseline (or reuse a trained run), export it to ONNX, serve "
        f"it with the local Triton server and segment scikit-image's '{PHOTO}' photo.",
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo-cam"), help="run directory")
    parser.add_argument("--preset", default="default", help="training preset (smoke: seconds)")
    parser.add_argument("--out", type=Path, help="demo outputs (default: RUN/demo)")
    parser.add_argument("--no-crf", action="store_true", help="segment without the dense CRF")
    parser.add_argument("--quiet", action="store_true", help="no training progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from wsss.checkpoint import CheckpointError
    from wsss.export.ensembles import RepositoryError
    from wsss.serving.bundle import BundleError

    try:
        run_demo(args.run, args.out or args.run / "demo", args.preset, not args.no_crf, args.quiet)
    except (BundleError, CheckpointError, RepositoryError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
