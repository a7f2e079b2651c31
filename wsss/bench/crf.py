"""Dense CRF benchmark: pydensecrf2 (reference) vs the PyTorch port, side by side.

    python -m wsss.bench.crf --out results.json [--device cuda] [--run RUN_DIR]

Speed: a photograph (scikit-image's bundled ones) resized to a long side of 256 / 500 / 512 /
1024 px at 4:3 (500 -> 500 x 375, the VOC size), network-like probabilities over 21 labels,
the ``deeplab`` and ``psa`` presets at 5 and 10 iterations. Per image: pydensecrf2 (one CPU
core, as it always runs), the torch port on one image and on a batch (time / batch), on one
thread and, in the bench section (``--all-cores`` here), on every core, as torch runs by
default. The torch rows build their lattices from scratch (the per-size Gaussian lattice cache
is cleared), as pydensecrf does; ``torch_b1_cached`` keeps that cache warm (same-size images).
Calls are interleaved run by run so background load hits all alike; wall and CPU (process)
time are both recorded: on a shared machine CPU time is the steadier one (on one thread).
Quality: label agreement and the largest marginal difference against pydensecrf2 on the same
images. ``profile``: where the torch time goes (lattice build, splat, blur, slice, softmax).

On a GPU host without pydensecrf2, ``--reference results_cpu.json`` takes the pydensecrf2
times of a CPU run for the speedups. ``--run RUN_DIR`` adds mIoU of CRF pseudo masks (seed
split) and DeepLab + CRF (val split) of a finished run with both implementations.
This is a benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from wsss.bench.common import fmt, markdown_table

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
PRESETS = ("deeplab", "psa")


def bench_inputs(long_side: int, n: int, labels: int, seed: int = 0):
    """n photographs uint8 [n, H, W, 3] (H = 3/4 W) and probabilities float32 [n, K, H, W]."""
    import torch
    from PIL import Image
    from skimage import data

    w, h = long_side, round(long_side * 3 / 4)
    rng = np.random.default_rng(seed)
    images, probs = [], []
    for i in range(n):
        photo = getattr(data, PHOTOS[i % len(PHOTOS)])()
        images.append(np.array(Image.fromarray(photo).convert("RGB").resize((w, h))))
        coarse = torch.from_numpy(rng.normal(0, 3, (1, labels, max(h // 16, 2), max(w // 16, 2))))
        logits = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        logits = logits.numpy() + rng.normal(0, 1, (labels, h, w))
        p = np.exp(logits - logits.max(0))
        probs.append((p / p.sum(0)).astype(np.float32))
    return np.stack(images), np.stack(probs)


def _stats(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 2), "min_ms": round(float(ms.min()), 2)}


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of ``repeats`` rounds of every call (after one warm-up round)."""
    out = {name: {"wall": [], "cpu": []} for name in calls}
    for rnd in range(repeats + 1):
        order = list(calls.items())
        for name, fn in order if rnd % 2 == 0 else order[::-1]:
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            if rnd:
                out[name]["wall"].append(time.perf_counter() - wall)
                out[name]["cpu"].append(time.process_time() - cpu)
    return out


def _pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def speed_rows(
    device: str,
    sizes: list[int],
    iterations: list[int],
    presets: list[str],
    labels: int,
    batch: int,
    repeats: int,
    say: Callable[[str], None],
    cores: int = 1,
) -> list[dict]:
    """One row per (preset, size, iterations): times per image and agreement.

    The torch rows run on the current thread count; with ``cores`` above it (CPU only) the
    torch rows are also timed on ``cores`` threads (``torch_b1_threads{cores}``, ...), what a
    user of this machine gets by default. pydensecrf2 always runs on one core.
    """
    import torch

    from wsss.refine import crf_torch
    from wsss.refine.crf import CRF_PRESETS, dense_crf

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    reference = _pydensecrf_available()
    threads = torch.get_num_threads()
    more_threads = dev.type == "cpu" and cores > threads

    def on_threads(fn: Callable[[], object], n: int) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(threads)

        return call

    rows = []
    for preset in presets:
        for size in sizes:
            images, probs = bench_inputs(size, batch, labels)
            x = torch.from_numpy(images).to(dev)
            p = torch.from_numpy(probs).to(dev)
            for n_iter in iterations:
                params = replace(CRF_PRESETS[preset], iterations=n_iter)

                def torch_call(k: int, params=params, x=x, p=p) -> object:
                    crf_torch._grid_kernel.cache_clear()
                    return crf_torch.dense_crf(x[:k], p[:k], params)

                # name -> (call, images per call)
                calls: dict[str, tuple[Callable[[], object], int]] = {}
                for k in dict.fromkeys((1, batch)):
                    calls[_torch_name(k)] = (lambda f=torch_call, k=k: f(k), k)
                    if more_threads:
                        fn = on_threads(lambda f=torch_call, k=k: f(k), cores)
                        calls[_torch_name(k, cores)] = (fn, k)
                calls["torch_b1_cached"] = (
                    lambda params=params, x=x, p=p: crf_torch.dense_crf(x[:1], p[:1], params),
                    1,
                )
                if reference:
                    image0, probs0 = images[0], probs[0]
                    calls["pydensecrf"] = (
                        lambda a=image0, b=probs0, c=params: dense_crf(a, b, c),
                        1,
                    )
                times = time_interleaved({name: c[0] for name, c in calls.items()}, repeats, sync)
                row = {"preset": preset, "size": f"{images.shape[2]}x{images.shape[1]}"}
                row |= {"long_side": size, "iterations": n_iter, "labels": labels}
                row |= {"torch_threads": threads, "cores": cores if more_threads else threads}
                for name, t in times.items():
                    per = calls[name][1]
                    row[name] = {kind: _stats([v / per for v in t[kind]]) for kind in t}
                if reference:
                    row |= agreement(images[: min(batch, 4)], probs[: min(batch, 4)], params, dev)
                rows.append(row)
                say(_format_row(row, batch))
    return rows


def agreement(images: np.ndarray, probs: np.ndarray, params, dev) -> dict:
    """Label agreement (%) and max |Q_torch - Q_pydensecrf| over a few images (one batch)."""
    import torch

    from wsss.refine import crf_torch
    from wsss.refine.crf import dense_crf

    ref = np.stack([dense_crf(i, p, params) for i, p in zip(images, probs, strict=True)])
    ours = crf_torch.dense_crf(
        torch.from_numpy(images).to(dev), torch.from_numpy(probs).to(dev), params
    )
    ours = ours.cpu().numpy()
    same = (ours.argmax(1) == ref.argmax(1)).mean()
    return {
        "label_agreement_pct": round(100.0 * float(same), 4),
        "max_prob_diff": float(np.abs(ours - ref).max()),
        "agreement_images": len(images),
    }


def _torch_name(images: int, threads: int | None = None) -> str:
    """Key of a torch row: ``torch_b4``, or ``torch_b4_threads2`` when timed on more threads."""
    return f"torch_b{images}" + (f"_threads{threads}" if threads else "")


def _torch_names(row: dict, batch: int) -> list[str]:
    """The torch rows of a speed row, one image then the batch, each then on all cores."""
    sizes = dict.fromkeys((1, batch))
    names = [_torch_name(k) for k in sizes]
    if row.get("cores", 1) > row.get("torch_threads", 1):
        names += [_torch_name(k, row["cores"]) for k in sizes]
    return [name for name in names if name in row]


def _format_row(row: dict, batch: int) -> str:
    def med(name: str) -> str:
        return "/".join(f"{row[name][kind]['median_ms']:.1f}" for kind in ("wall", "cpu"))

    text = f"{row['preset']:8s} {row['size']:>9s} it={row['iterations']:2d}  (wall/cpu ms)  "
    if "pydensecrf" in row:
        text += f"pydensecrf {med('pydensecrf')}"
    for name in _torch_names(row, batch):
        text += f"  {name.replace('_', ' ')} {med(name)}"
    if "label_agreement_pct" in row:
        text += f"  agree {row['label_agreement_pct']:.3f} %  dQ {row['max_prob_diff']:.1e}"
    return text


def add_speedups(rows: list[dict], reference_rows: list[dict] | None, batch: int) -> None:
    """speedup = pydensecrf median / torch median (per image), wall and CPU time.

    On several threads only the wall-time speedup means anything (CPU time adds the threads).
    """
    ref = {(r["preset"], r["size"], r["iterations"]): r for r in reference_rows or []}
    for row in rows:
        base = (
            row if "pydensecrf" in row else ref.get((row["preset"], row["size"], row["iterations"]))
        )
        if base is None or "pydensecrf" not in base:
            continue
        row["speedup"] = {
            name: {
                kind: round(base["pydensecrf"][kind]["median_ms"] / row[name][kind]["median_ms"], 2)
                for kind in ("wall", "cpu")
            }
            for name in _torch_names(row, batch)
        }
        if base is not row:
            row["speedup"]["pydensecrf_from"] = "reference file (CPU run)"


def profile_torch(device: str, size: int, labels: int, preset: str, repeats: int) -> dict:
    """Where the time of one image goes: lattice build and one mean-field step by part (ms)."""
    import torch

    from wsss.refine import crf_torch
    from wsss.refine.crf import CRF_PRESETS

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    images, probs = bench_inputs(size, 1, labels)
    x, p = torch.from_numpy(images).to(dev), torch.from_numpy(probs).to(dev)
    params = CRF_PRESETS[preset]
    unary = crf_torch._pixel_major(crf_torch.unary_from_probs(p))
    parts: dict[str, list[float]] = {}

    # CPU: process time (steadier than wall time on a shared machine); CUDA: synchronised wall.
    clock = time.perf_counter if dev.type == "cuda" else time.process_time

    @contextmanager
    def part(name: str):
        sync()
        start = clock()
        yield
        sync()
        parts.setdefault(name, []).append(clock() - start)

    with torch.no_grad():
        for _ in range(repeats + 1):
            crf_torch._grid_kernel.cache_clear()
            with part("build: Gaussian lattice + norm (cached per size)"):
                crf_torch._grid_kernel(x.shape[1], x.shape[2], float(params.gaussian_sxy), dev)
            with part("build: the rest (bilateral lattice and norm, filter matrices)"):
                pairwise = crf_torch.build_pairwise(x, params)
            q = crf_torch._softmax_(-unary)
            for name, f in zip(("Gaussian", "bilateral"), pairwise.filters, strict=True):
                with part(f"step: {name} splat"):
                    table = f.splat(q)
                with part(f"step: {name} blur ({len(f.blur)} passes)"):
                    for b in f.blur:
                        table = b(table)
                with part(f"step: {name} slice"):
                    f.slice(table)
            scores = -unary
            with part("step: softmax"):
                crf_torch._softmax_(scores)
            with part(f"mean field ({params.iterations} iterations)"):
                crf_torch.mean_field(unary, pairwise, params.iterations)
    lattice_rows = [f.n_rows for f in pairwise.filters]
    out = {name: _stats(v[1:])["median_ms"] for name, v in parts.items()}
    return {
        "size": f"{x.shape[2]}x{x.shape[1]}",
        "preset": preset,
        "labels": labels,
        "lattice_vertices": lattice_rows,
        "pixels": x.shape[1] * x.shape[2],
        "clock": "wall (synchronised)" if dev.type == "cuda" else "process CPU time",
        "median_ms": out,
    }


def _pct(miou: float) -> float:
    return round(100.0 * float(miou), 3)


def quality_on_run(run_dir: Path, max_images: int, device: str, say) -> dict:
    """mIoU of CRF pseudo masks and of DeepLab + CRF of a run, with both implementations."""
    import torch

    from wsss.config import CRFConfig, crf_params
    from wsss.data.loaders import image_to_tensor
    from wsss.metrics import SegmentationMeter
    from wsss.pipeline import load_context
    from wsss.refine import crf_select
    from wsss.refine.pseudo import pseudo_mask
    from wsss.stages.cams import load_cams

    ctx = load_context(run_dir)
    cfg = ctx.cfg
    impls = crf_select.CRF_IMPLS
    result: dict = {"run": str(run_dir)}
    p = cfg.pseudo
    ids = ctx.ids(cfg.data.seed_split)[:max_images]
    if ids and ctx.source.has_masks(cfg.data.seed_split):
        meters = {(impl, kind): SegmentationMeter(ctx.class_names) for impl in impls
                  for kind in ("crf", "config")}  # fmt: skip
        same = total = 0
        for image_id in ids:
            sample = ctx.source.load(image_id)
            keys, cams = load_cams(run_dir, image_id)
            masks = {}
            for impl in impls:
                common = dict(bg_threshold=cfg.cam.bg_threshold, crf_gt_prob=p.crf_gt_prob)
                crf = crf_params(p.crf_preset, CRFConfig(impl, device))
                meters[impl, "crf"].update(
                    sample.mask, pseudo_mask(sample.image, cams, keys, crf=crf, **common)
                )
                masks[impl] = pseudo_mask(
                    sample.image, cams, keys, crf=crf, ignore_uncertain=p.ignore_uncertain,
                    conf_fg=p.conf_fg, conf_bg=p.conf_bg, **common,
                )  # fmt: skip
                meters[impl, "config"].update(sample.mask, masks[impl])
            same += int((masks["torch"] == masks["pydensecrf"]).sum())
            total += masks["torch"].size
        result["pseudo"] = {
            "images": len(ids),
            "preset": p.crf_preset,
            "miou_crf_pct": {impl: _pct(meters[impl, "crf"].miou()) for impl in impls},
            "miou_run_config_pct": {impl: _pct(meters[impl, "config"].miou()) for impl in impls},
            "mask_agreement_pct": round(100.0 * same / max(total, 1), 4),
        }
        say(f"pseudo masks: {result['pseudo']}")
    deeplab = run_dir / "deeplab.pt"
    val = ctx.ids(cfg.data.val_split)[:max_images]
    if deeplab.exists() and val and ctx.source.has_masks(cfg.data.val_split):
        from wsss.checkpoint import load_deeplab
        from wsss.models.deeplab import predict_probs

        model, _ = load_deeplab(deeplab)
        params = crf_params(cfg.seg.crf_preset)
        meters = {impl: SegmentationMeter(ctx.class_names) for impl in impls}
        plain = SegmentationMeter(ctx.class_names)
        same = total = 0
        with torch.no_grad():
            for image_id in val:
                sample = ctx.source.load(image_id)
                x = image_to_tensor(sample.image)
                probs = predict_probs(model, x, cfg.seg.test_scales, cfg.seg.test_flip).numpy()
                plain.update(sample.mask, probs.argmax(0))
                out = {}
                for impl in impls:
                    q = crf_select.dense_crf(sample.image.copy(), probs, params, impl, device)
                    out[impl] = q.argmax(0)
                    meters[impl].update(sample.mask, out[impl])
                same += int((out["torch"] == out["pydensecrf"]).sum())
                total += out["torch"].size
        result["deeplab"] = {
            "images": len(val),
            "preset": cfg.seg.crf_preset,
            "miou_no_crf_pct": _pct(plain.miou()),
            "miou_crf_pct": {impl: _pct(meters[impl].miou()) for impl in impls},
            "label_agreement_pct": round(100.0 * same / max(total, 1), 4),
        }
        say(f"deeplab + crf: {result['deeplab']}")
    return result


# ``python -m wsss.bench --only crf``: sizes, iterations and repeats that fit in 20 minutes on a
# 2-core CPU; the standalone CLI below takes any.
SECTION_SIZES, SECTION_ITERATIONS, SECTION_REPEATS, SECTION_BATCH = (256, 500, 1024), (5, 10), 5, 4


def section(out_dir: Path, say: Callable[[str], None]) -> dict:
    """Both implementations side by side on this machine (and on CUDA when present)."""
    import torch

    # pydensecrf2 runs on one core; the torch CPU rows run on one thread, then on every core.
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict = {"labels": 21, "batch": SECTION_BATCH, "devices": {}}
    for device in devices:
        rows = speed_rows(
            device,
            list(SECTION_SIZES),
            list(SECTION_ITERATIONS),
            ["deeplab"],
            21,
            SECTION_BATCH,
            SECTION_REPEATS,
            say,
            cores=os.cpu_count() or 1,
        )
        add_speedups(rows, results["devices"].get("cpu", {}).get("rows"), SECTION_BATCH)
        name = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"cpu ({os.cpu_count()} cores; pydensecrf2 always runs on one)"
        )
        results["devices"][device] = {
            "name": name,
            "rows": rows,
            "profile": profile_torch(device, 500, 21, "deeplab", 3),
        }
    run = out_dir / "runs" / "cam"
    if (run / "deeplab.pt").exists():
        results["quality"] = quality_on_run(run, 200, devices[-1], say)
    return results


def _column_title(name: str, row: dict, device: str) -> str:
    """``torch_b4_threads2`` -> "torch ms/img (speedup), batch 4, 2 threads"."""
    k = int(name.split("_")[1][1:])
    title = f"torch ms{'/img' if k > 1 else ''} (speedup)" + (f", batch {k}" if k > 1 else "")
    if device != "cpu":
        return title
    threads = int(name.split("threads")[1]) if "threads" in name else row.get("torch_threads", 1)
    return title + f", {threads} thread{'s' * (threads > 1)}"


def _time_cell(row: dict, name: str) -> str:
    """Median wall ms, and the speedup over pydensecrf2 where there is one."""
    speed = row.get("speedup", {}).get(name, {}).get("wall")
    ms = fmt(row[name]["wall"]["median_ms"], 0)
    return ms if speed is None else f"{ms} ({fmt(speed, 2)}x)"


def markdown(results: dict) -> str:
    """Time per image (median wall ms) of both implementations; agreement; mIoU with each."""
    b = results["batch"]
    parts = []
    for device, entry in results["devices"].items():
        first = entry["rows"][0]
        names = _torch_names(first, b)
        rows = [
            [r["size"], str(r["iterations"]),
             fmt(r.get("pydensecrf", {}).get("wall", {}).get("median_ms"), 0),
             *(_time_cell(r, n) for n in names), fmt(r.get("label_agreement_pct"), 2)]
            for r in entry["rows"]
        ]  # fmt: skip
        header = ["image", "iterations", "pydensecrf2 ms"]
        header += [_column_title(n, first, device) for n in names] + ["label agreement %"]
        parts.append(
            f"Dense CRF, `deeplab` preset, 21 labels, on {entry['name']}:\n\n"
            + markdown_table(header, rows)
        )
        prof = entry["profile"]
        prof_rows = [[k, fmt(v, 1)] for k, v in prof["median_ms"].items()]
        parts.append(
            f"Where the torch time goes ({prof['size']}, {prof['clock']}):\n\n"
            + markdown_table(["part", "ms"], prof_rows)
        )
    q = results.get("quality")
    if q:
        kinds = (("pseudo", "CRF pseudo masks", "seed", "mask_agreement_pct"),
                 ("deeplab", "DeepLab + CRF", "val", "label_agreement_pct"))  # fmt: skip
        rows = [
            [f"{title} ({q[key]['images']} {split} images)",
             *(fmt(q[key]["miou_crf_pct"][impl], 2) for impl in ("pydensecrf", "torch")),
             fmt(q[key][agree], 2)]
            for key, title, split, agree in kinds
            if key in q
        ]  # fmt: skip
        parts.append(
            "mIoU on the built-in benchmark (the quality section's `cam` run):\n\n"
            + markdown_table(["", "pydensecrf2", "torch", "pixels agreeing %"], rows)
        )
    return "\n".join(parts)


def plot(results: dict, path: Path) -> Path:
    """Time per image against image size, both implementations, 10 iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    b = results["batch"]
    for device, entry in results["devices"].items():
        rows = [r for r in entry["rows"] if r["iterations"] == 10]
        if not rows:
            continue
        pixels = [r["long_side"] for r in rows]
        if device == "cpu":
            ax.plot(
                pixels,
                [r["pydensecrf"]["wall"]["median_ms"] for r in rows],
                "o-",
                label="pydensecrf2 (1 core)",
            )
        styles = ("s-", "^--", "s:", "^:")
        for name, style in zip(_torch_names(rows[0], b), styles, strict=False):
            label = _column_title(name, rows[0], device).replace(" (speedup)", "")
            ax.plot(
                pixels,
                [r[name]["wall"]["median_ms"] for r in rows],
                style,
                label=label.replace("torch ms/img", "torch per image").replace("torch ms", "torch")
                + ("" if device == "cpu" else f", {device}"),
            )
    ax.set_xlabel("long side (px, 4:3)")
    ax.set_ylabel("ms per image (10 iterations)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 500, 512, 1024])
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--batch", type=int, default=4, help="batch for the batched torch row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--all-cores", action="store_true", help="also time the torch rows on every CPU core"
    )
    parser.add_argument("--reference", type=Path, help="a CPU results JSON (pydensecrf times)")
    parser.add_argument("--run", type=Path, help="a finished run: mIoU with both CRFs")
    parser.add_argument("--max-images", type=int, default=200, help="images per split (--run)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed rows")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    def say(text: str) -> None:
        print(text, flush=True)

    results: dict = {
        "benchmark": "crf",
        "device": args.device,
        "device_name": (
            torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        ),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "python": sys.version.split()[0],
        "pydensecrf": _pydensecrf_available(),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if not args.no_speed:
        rows = speed_rows(
            args.device, args.sizes, args.iterations, args.presets, args.labels, args.batch,
            args.repeats, say, cores=(os.cpu_count() or 1) if args.all_cores else args.threads,
        )  # fmt: skip
        reference = json.loads(args.reference.read_text())["rows"] if args.reference else None
        add_speedups(rows, reference, args.batch)
        results["rows"] = rows
        results["profile"] = [
            profile_torch(args.device, 500, args.labels, preset, args.repeats)
            for preset in args.presets
        ]
        for prof in results["profile"]:
            say(json.dumps(prof))
    if args.run:
        results["quality"] = quality_on_run(args.run, args.max_images, args.device, say)
    if hasattr(os, "getloadavg"):
        results["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
