"""Inference benchmark: PyTorch eager vs ONNX Runtime (CPU) for a run's two networks.

    python -m wsss.bench.inference --run RUN_DIR --out results.json [--large]

Both networks (the CAM network and DeepLab, wrapped exactly as exported) are timed at 321 x 321
(and 513 x 513 with ``--large``), batch 1 and 4, in one process: PyTorch under
``torch.inference_mode`` and ONNX Runtime on the model ``export/onnx.py`` would write (exported
here into a temporary folder). The two are interleaved run by run, so background load hits both
alike; median and p95 of the repeated runs are written as JSON with the ratio ORT / PyTorch.
Timings on a shared machine are noisy: compare ratios, and repeat before trusting a change.
This is a benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from wsss.bench.common import fmt, markdown_table

# ONNX Runtime is expected to take at most this share of PyTorch's time (env-probe: ~0.7x).
EXPECTED_RATIO = 0.8


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
    }


def time_pair(
    first: Callable[[], object], second: Callable[[], object], repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Wall times of ``repeats`` calls of each, interleaved, after ``warmup`` calls of each."""
    for _ in range(warmup):
        first()
        second()
    times_a, times_b = [], []
    for i in range(repeats):
        # Alternate which goes first, so neither always runs on a warm cache after the other.
        order = ((first, times_a), (second, times_b))
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return times_a, times_b


def run_benchmark(
    run_dir: Path,
    sizes: list[int],
    batches: list[int],
    repeats: int,
    warmup: int,
    threads: int,
    say: Callable[[str], None] = print,
) -> dict:
    """Times every (network, size, batch); returns the JSON-ready results."""
    import onnxruntime
    import torch

    from wsss.export.onnx import NETWORKS, export_onnx, ort_runner, ort_session, torch_runner
    from wsss.export.parity import parity_images

    torch.set_num_threads(threads)
    results = []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="wsss-bench-") as tmp:
        for network in NETWORKS:
            model, meta = network.load(run_dir / network.checkpoint)
            wrapper = network.wrap(model)
            path = Path(tmp) / f"{network.suffix}.onnx"
            export_onnx(wrapper, path, network.outputs, {"network": network.suffix})
            session = ort_session(path, threads=threads)
            run_torch = torch_runner(wrapper, network.outputs)
            run_ort = ort_runner(session, network.outputs)
            for size in sizes:
                for batch in batches:
                    images = parity_images(batch, size, size)
                    t_torch, t_ort = time_pair(
                        partial(run_torch, images),
                        partial(run_ort, images),
                        repeats,
                        warmup,
                    )
                    torch_stats, ort_stats = _stats(t_torch), _stats(t_ort)
                    ratio = ort_stats["median_ms"] / torch_stats["median_ms"]
                    results.append(
                        {
                            "network": network.suffix,
                            "method": meta["method"],
                            "backbone": meta["backbone"]["name"],
                            "input_shape": [batch, 3, size, size],
                            "pytorch": torch_stats,
                            "onnxruntime": ort_stats,
                            "ratio_ort_over_pytorch": ratio,
                            "within_expected": ratio <= EXPECTED_RATIO,
                        }
                    )
                    say(
                        f"{network.suffix:8s} {batch}x3x{size}x{size}: pytorch median "
                        f"{torch_stats['median_ms']:8.1f} ms (p95 {torch_stats['p95_ms']:8.1f}), "
                        f"onnxruntime {ort_stats['median_ms']:8.1f} ms "
                        f"(p95 {ort_stats['p95_ms']:8.1f}), ratio {ratio:.2f}"
                    )
            del session
    return {
        "run": str(run_dir.resolve()),
        "repeats": repeats,
        "warmup": warmup,
        "expected_ratio_max": EXPECTED_RATIO,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "machine": platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "results": results,
    }


def reference_run(out_dir: Path, say: Callable[[str], None]) -> Path:
    """The quality section's ``cam`` run, else a fresh one with the default networks.

    Timings depend on the architecture, not the weights: without a finished benchmark run, the
    default preset's networks are trained for one epoch on 16 images (a minute).
    """
    run = out_dir / "runs" / "cam"
    if (run / "classifier.pt").exists() and (run / "deeplab.pt").exists():
        return run
    from wsss.cli import main

    run = out_dir / "runs" / "inference-cam"
    say(f"inference: no benchmark run; training default networks briefly into {run}")
    args = [
        "cam",
        "--preset",
        "default",
        "--out",
        str(run),
        "--quiet",
        "--stages",
        "cls,cam,pseudo,seg",
    ]
    sets = ["data.max_images=16", "cls.epochs=1", "seg.epochs=1"]
    if main([*args, *(x for item in sets for x in ("--set", item))]) != 0:
        raise RuntimeError("training the inference benchmark's networks failed")
    return run


def section(out_dir: Path, say: Callable[[str], None]) -> dict:
    """Both networks, batch 1 and 4, 321 and 513 px; 2 threads for both runtimes."""
    threads = min(os.cpu_count() or 1, 2)
    return run_benchmark(reference_run(out_dir, say), [321, 513], [1, 4], 10, 2, threads, say)


def markdown(results: dict) -> str:
    """Median and p95 ms per call, PyTorch eager beside ONNX Runtime, and their ratio."""
    rows = []
    for r in results["results"]:
        b, _, h, w = r["input_shape"]
        pt, ort = r["pytorch"], r["onnxruntime"]
        rows.append(
            [
                f"{r['network']} ({r['backbone']})",
                f"{b} x {h} x {w}",
                fmt(pt["median_ms"], 0),
                fmt(pt["p95_ms"], 0),
                fmt(ort["median_ms"], 0),
                fmt(ort["p95_ms"], 0),
                fmt(r["ratio_ort_over_pytorch"], 2),
            ]
        )
    header = [
        "network",
        "batch x size",
        "PyTorch median ms",
        "PyTorch p95",
        "ORT median ms",
        "ORT p95",
        "ORT / PyTorch",
    ]
    env = results["environment"]
    note = (
        f"{results['repeats']} interleaved runs per cell after {results['warmup']} warm-up "
        f"runs, {env['threads']} intra-op threads for both runtimes.\n\n"
    )
    return note + markdown_table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.bench.inference",
        description="Time PyTorch eager against ONNX Runtime (CPU) for a run's CAM network and "
        "DeepLab: median and p95 of repeated, interleaved runs in one process, written as JSON.",
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="run directory (classifier.pt, deeplab.pt)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--large", action="store_true", help="also time 513x513 inputs")
    parser.add_argument(
        "--batches", default="1,4", help="comma-separated batch sizes (default: 1,4)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS") or 1),
        help="intra-op threads for both runtimes (default: OMP_NUM_THREADS or 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        print(f"error: --batches {args.batches!r}: expected e.g. 1,4", file=sys.stderr)
        return 2
    if not batches or min(batches) < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        print("error: batches, --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    from wsss.checkpoint import CheckpointError

    sizes = [321, 513] if args.large else [321]
    try:
        for name in ("classifier.pt", "deeplab.pt"):
            if not (args.run / name).is_file():
                raise CheckpointError(f"{args.run / name}: no such file")
        data = run_benchmark(args.run, sizes, batches, args.repeats, args.warmup, args.threads)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
