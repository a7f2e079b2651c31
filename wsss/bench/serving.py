"""Serving section: the local Triton end to end, per endpoint, protocol and concurrency.

The models: the quality section's ``runs/cam/seed0`` (default preset) when it holds both
checkpoints, else a smoke run trained into ``runs/serving-smoke``. They are exported (ONNX,
parity-checked), with the ``imagenet`` source beside them, into ``serving_repo/`` next to the
results, with the checked-in ``densecrf`` config (its ``auto`` layout resolved for this host),
and served by the Triton binary of nvidia-pytriton on free loopback ports. One real photo
(scikit-image's astronaut, 512x512 JPEG) is sent by :func:`wsss.serving.load.run_load` to
``<method>_cam``, ``<method>_segment`` (dense CRF on) and ``<method>_segment`` with
``crf=false``, over HTTP and gRPC, from 1, 2 and 4 closed-loop clients. Around every cell
Triton's statistics API and its Prometheus metrics endpoint give, per composing model, the
mean queue and compute time per request; the slowest stage of a segment request is named.

Then (:mod:`wsss.bench.serving_checks`): served labels against the reference pipeline
(pydensecrf2 at full settings, in process) on the benchmark's validation images and real
photos; the same work in one process (served p50 / in-process p50); dynamic batching's queue
delay at ``QUEUE_DELAYS_US``; and the configuration measured on 2026-11-21 (pydensecrf2 on two
instances, networks on one thread) again on the same machine, beside that day's figures.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

from wsss.bench.common import Say, fmt
from wsss.bench.serving_report import PREVIOUS, PROTOCOLS, markdown, plot

CONCURRENCY = (1, 2, 4)
# (key, endpoint suffix, request parameters, outputs, requests per cell)
ENDPOINTS = (
    ("cam", "_cam", None, ["SCORES", "CAMS", "CLASS_NAMES"], 32),
    ("segment", "_segment", None, ["LABELS"], 32),
    ("segment_no_crf", "_segment", {"crf": False}, ["LABELS"], 32),
)
QUEUE_DELAYS_US = (0, 2000, 10000)
BASELINE = Path(__file__).resolve().parents[2] / "bench" / "results" / "2026-11-21"

WARMUP = 2  # unmeasured requests per endpoint and protocol
TIMEOUT = 300.0  # seconds per request
IMAGE = "astronaut"


def photo_jpeg(name: str = IMAGE, quality: int = 90) -> bytes:
    """scikit-image's bundled photo ``name`` as JPEG bytes (astronaut: 512x512)."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def find_run(out_dir: Path, say: Say) -> tuple[Path, str]:
    """(run directory, how it was found): the quality section's cam run, else a smoke run."""
    for quality in (out_dir / "runs" / "cam" / "seed0", out_dir / "runs" / "cam"):
        if (quality / "classifier.pt").is_file() and (quality / "deeplab.pt").is_file():
            return quality, "quality section's default-preset run"
    from wsss.cli import main

    run = out_dir / "runs" / "serving-smoke"
    say(f"serving: no quality run of cam in {out_dir / 'runs'}; training a smoke run into {run}")
    args = [
        "cam",
        "--preset",
        "smoke",
        "--out",
        str(run),
        "--quiet",
        "--stages",
        "cls,cam,pseudo,seg",
    ]
    if main(args) != 0:
        raise RuntimeError(f"smoke run into {run} failed")
    return run, "smoke run (the quality section's runs/cam was not there)"


def validation_images(run: Path, limit: int | None = None) -> list:
    """(image, mask) of the validation split of the run's dataset (as its config names it)."""
    from wsss.pipeline import load_context

    ctx = load_context(run)
    ids = ctx.ids(ctx.cfg.data.val_split)[:limit]
    return [(sample.image, sample.mask) for sample in map(ctx.source.load, ids)]


def model_stats(http_url: str) -> dict[str, dict[str, tuple[int, int]]]:
    """model -> statistic (success, queue, compute_input, ...) -> (count, ns), all models."""
    import tritonclient.http as tc

    client = tc.InferenceServerClient(http_url)
    try:
        stats = client.get_inference_statistics("")
    finally:
        client.close()
    return {
        m["name"]: {
            key: (int(value.get("count", 0)), int(value.get("ns", 0)))
            for key, value in m["inference_stats"].items()
        }
        for m in stats["model_stats"]
    }


def stage_times(before: dict, after: dict, endpoint: str, stages: list[str]) -> dict:
    """Mean ms per request of each stage (queue, compute) and the ensemble, between snapshots."""

    def delta(model: str, key: str) -> tuple[int, int]:
        c0, n0 = before.get(model, {}).get(key, (0, 0))
        c1, n1 = after.get(model, {}).get(key, (0, 0))
        return c1 - c0, n1 - n0

    out = {}
    for stage in stages:
        count, _ = delta(stage, "success")
        if count <= 0:
            continue
        compute = sum(
            delta(stage, k)[1] for k in ("compute_input", "compute_infer", "compute_output")
        )
        queue = delta(stage, "queue")[1]
        out[stage] = {
            "requests": count,
            "queue_ms": round(queue / count / 1e6, 2),
            "compute_ms": round(compute / count / 1e6, 2),
            "total_ms": round((queue + compute) / count / 1e6, 2),
        }
    count, ns = delta(endpoint, "success")
    server = round(ns / count / 1e6, 2) if count > 0 else None
    return {"stages": out, "server_ms": server}


def ensemble_steps(http_url: str, model: str) -> list[str]:
    """The composing models of an ensemble, in order."""
    import tritonclient.http as tc

    client = tc.InferenceServerClient(http_url)
    try:
        config = client.get_model_config(model)
    finally:
        client.close()
    return [step["model_name"] for step in config["ensemble_scheduling"]["step"]]


def slowest(cell: dict) -> dict | None:
    """The stage with the largest time per request and its share of the client's mean latency."""
    stages, mean = cell["stages"], cell["latency_ms"]["mean"]
    if not stages or not mean:
        return None
    name = max(stages, key=lambda s: stages[s]["total_ms"])
    return {
        "stage": name,
        "ms": stages[name]["total_ms"],
        "latency_ms": mean,
        "share": round(stages[name]["total_ms"] / mean, 3),
    }


def measure(
    server,
    method: str,
    payload: bytes,
    say: Say,
    endpoints=ENDPOINTS,
    protocols=PROTOCOLS,
    concurrency=CONCURRENCY,
    prefix: str = "",
) -> list[dict]:
    """Every endpoint x protocol x concurrency cell: run_load summary plus stage times from the
    statistics API and the metrics endpoint; ``prefix`` goes in front of the cells' keys."""
    from wsss.bench.serving_checks import metrics_times, read_metrics
    from wsss.serving.load import run_load

    cells = []
    urls = {"http": server.http_url, "grpc": server.grpc_url}
    for key, suffix, params, outputs, total in endpoints:
        endpoint = method + suffix
        stages = ensemble_steps(server.http_url, endpoint)
        for protocol in protocols:
            url = urls[protocol]
            run_load(url, protocol, endpoint, payload, 1, WARMUP, params, outputs, timeout=TIMEOUT)
            for clients in concurrency:
                per_client = max(1, total // clients) if clients == 1 else 2 * total // clients
                before, scraped = model_stats(server.http_url), read_metrics(server.metrics_url)
                result = run_load(
                    url, protocol, endpoint, payload, clients, per_client, params, outputs,
                    timeout=TIMEOUT,
                )  # fmt: skip
                after = model_stats(server.http_url)
                metrics = metrics_times(scraped, read_metrics(server.metrics_url), stages)
                times = stage_times(before, after, endpoint, stages)
                cell = {"endpoint": prefix + key, **result, **times, "metrics": metrics}
                cell["slowest"] = slowest(cell)
                cells.append(cell)
                lat = result["latency_ms"]
                say(
                    f"serving: {endpoint} {prefix}{key} {protocol} x{clients}: "
                    f"{result['throughput_rps']:.2f} req/s, p50 {fmt(lat['p50'], 0)} "
                    f"p95 {fmt(lat['p95'], 0)} p99 {fmt(lat['p99'], 0)} ms, "
                    f"{result['errors']} errors"
                )
    return cells


def headline(cells: list[dict]) -> dict | None:
    """The slowest stage of a segment request (CRF on, 1 client; HTTP if measured)."""
    chosen = [c for c in cells if c["endpoint"] == "segment" and c["clients"] == 1]
    chosen.sort(key=lambda c: PROTOCOLS.index(c["protocol"]))
    for cell in chosen:
        if cell["slowest"]:
            return {**cell["slowest"], "model": cell["model"], "protocol": cell["protocol"]}
    return None


def baseline_cells(path: Path = BASELINE / "results.json") -> dict | None:
    """The 2026-11-21 serving figures (pydensecrf2 2 x 1, networks on one thread), if kept."""
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())["sections"].get("serving")
    if entry is None:
        return None
    keep = [c for c in entry["results"]["cells"] if c["endpoint"] in ("cam", "segment")]
    cells = [{k: c[k] for k in ("endpoint", "protocol", "clients", "throughput_rps",
                                 "latency_ms")} for c in keep]  # fmt: skip
    return {"measured": entry["measured"], "cells": cells,
            "load_average": entry["results"].get("load_average")}  # fmt: skip


def section(out_dir: Path, say: Say) -> dict:
    """Trains or finds the models, exports, serves, measures; the servers always stop."""
    from PIL import Image

    from wsss.bench import serving_checks as checks
    from wsss.export.ensembles import repository_from_run
    from wsss.imagenet.export import repository_for_imagenet
    from wsss.serving.server import TritonServer

    run, origin = find_run(out_dir, say)
    repository = out_dir / "serving_repo"
    shutil.rmtree(repository, ignore_errors=True)
    method = repository_from_run(run, repository, say=lambda line: None)
    repository_for_imagenet(repository, say=lambda line: None)
    crf = checks.served_crf(repository)
    say(f"serving: {run} ({origin}) and the imagenet source exported to {repository}; "
        f"densecrf: {crf.params.impl} on {crf.params.device}, side <= {crf.max_side}")  # fmt: skip
    payload = photo_jpeg()
    width, height = Image.open(io.BytesIO(payload)).size
    load_before = os.getloadavg()[0]
    logs = out_dir / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    with TritonServer(repository, 0, 0, 0, log_path=logs / "serving-triton.log") as server:
        cells = measure(server, method, payload, say)
        say("serving: served labels against the pydensecrf2 reference")
        agreement = checks.agreement(server.http_url, repository, method, validation_images(run))
    say("serving: the same work in one process")
    local = checks.in_process(repository, method, payload)
    http_14 = dict(protocols=("http",), concurrency=(1, 4))
    two = [e for e in ENDPOINTS if e[0] in ("cam", "segment")]
    delays = []
    for delay in QUEUE_DELAYS_US[1:]:
        checks.set_queue_delay(repository, method, delay)
        log = logs / f"serving-triton-delay{delay}.log"
        with TritonServer(repository, 0, 0, 0, log_path=log) as server:
            found = measure(server, method, payload, say, two, prefix=f"delay{delay}_", **http_14)
        delays += found
    checks.set_queue_delay(repository, method, 0)
    previous_repo = out_dir / "serving_repo_previous"
    shutil.rmtree(previous_repo, ignore_errors=True)
    shutil.copytree(repository, previous_repo)
    previous = checks.previous_layout(previous_repo, method)
    say("serving: the 2026-11-21 configuration on this machine")
    log = logs / "serving-triton-previous.log"
    with TritonServer(previous_repo, 0, 0, 0, log_path=log) as server:
        cells += measure(server, method, payload, say, two, prefix=f"{PREVIOUS}_", **http_14)
    top = headline(cells)
    if top:
        say(f"serving: slowest stage of {top['model']}: {top['stage']} {top['share']:.0%}")
    return {
        "run": str(run),
        "run_origin": origin,
        "method": method,
        "image": {"name": IMAGE, "size": [height, width], "format": "JPEG", "bytes": len(payload)},
        "concurrency": list(CONCURRENCY),
        "densecrf": {
            "impl": crf.params.impl,
            "device": crf.params.device,
            "instances": checks.densecrf_instances(repository),
            "threads": crf.threads,
            "max_side": crf.max_side,
            "iterations": crf.params.iterations,
        },
        "previous": previous,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cells": cells,
        "queue_delays": {"delays_us": list(QUEUE_DELAYS_US), "cells": delays},
        "in_process": local,
        "agreement": agreement,
        "baseline": baseline_cells(),
        "slowest_stage": top,
    }


__all__ = ["PROTOCOLS", "markdown", "plot", "section"]
