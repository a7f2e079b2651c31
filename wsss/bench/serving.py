"""Serving section: the local Triton end to end, per endpoint, protocol and concurrency.

The models: the quality section's ``runs/cam`` (default preset) when it holds both checkpoints,
else a smoke run trained into ``runs/serving-smoke``. They are exported (ONNX, parity-checked)
into ``serving_repo/`` next to the results and served by the Triton binary of nvidia-pytriton
on free loopback ports. One real photo (scikit-image's astronaut, 512x512 JPEG) is sent by
:func:`wsss.serving.load.run_load` to ``<method>_cam``, ``<method>_segment`` (dense CRF on) and
``<method>_segment`` with ``crf=false``, over HTTP and gRPC, from 1, 2 and 4 closed-loop
clients. Around every measured cell Triton's statistics API gives, per composing model
(decode, preprocess, the ONNX network, densecrf / cam_post), the mean queue and compute time
per request; the slowest stage of a segment request and its share of the end-to-end latency
are named. Then ``densecrf`` runs the PyTorch CRF (:func:`wsss.export.ensembles.
configure_densecrf`) in two layouts, one instance on every core and one one-thread instance per
core, each on a server of its own, and ``<method>_segment`` is measured again.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

from wsss.bench.common import Say, fmt, markdown_table

CONCURRENCY = (1, 2, 4)
PROTOCOLS = ("http", "grpc")
# (key, endpoint suffix, request parameters, outputs, requests per cell)
ENDPOINTS = (
    ("cam", "_cam", None, ["SCORES", "CAMS", "CLASS_NAMES"], 32),
    ("segment", "_segment", None, ["LABELS"], 16),
    ("segment_no_crf", "_segment", {"crf": False}, ["LABELS"], 32),
)
LABELS = {
    "cam": "`{m}_cam`",
    "segment": "`{m}_segment` (CRF)",
    "segment_no_crf": "`{m}_segment` crf=false",
}


def reference_layout(repository: Path) -> dict:
    """The exported densecrf's layout: its instance count, pydensecrf2's single thread each."""
    from wsss.export.ensembles import read_config

    config = read_config(repository / "densecrf" / "config.pbtxt")
    return {"instances": config.instance_group[0].count, "threads": 1}


def torch_layouts(cores: int) -> list[dict]:
    """densecrf layouts measured with the PyTorch CRF: all cores in one instance (latency) and
    one one-thread instance per core (throughput), each with its endpoint key."""
    layouts = [(1, cores), (cores, 1)] if cores > 1 else [(1, 1)]
    return [{"key": f"segment_torch_{i}x{t}", "instances": i, "threads": t} for i, t in layouts]


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
    quality = out_dir / "runs" / "cam"
    if (quality / "classifier.pt").is_file() and (quality / "deeplab.pt").is_file():
        return quality, "quality section's default-preset run"
    from wsss.cli import main

    run = out_dir / "runs" / "serving-smoke"
    say(f"serving: no {quality}/deeplab.pt; training a smoke run into {run}")
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


def measure(server, method: str, payload: bytes, say: Say, endpoints=ENDPOINTS) -> list[dict]:
    """Every endpoint x protocol x concurrency cell: run_load summary plus stage times."""
    from wsss.serving.load import run_load

    cells = []
    urls = {"http": server.http_url, "grpc": server.grpc_url}
    for key, suffix, params, outputs, total in endpoints:
        endpoint = method + suffix
        stages = ensemble_steps(server.http_url, endpoint)
        for protocol in PROTOCOLS:
            url = urls[protocol]
            run_load(url, protocol, endpoint, payload, 1, WARMUP, params, outputs, timeout=TIMEOUT)
            for clients in CONCURRENCY:
                per_client = math.ceil(total / clients)
                before = model_stats(server.http_url)
                result = run_load(
                    url, protocol, endpoint, payload, clients, per_client, params, outputs,
                    timeout=TIMEOUT,
                )  # fmt: skip
                after = model_stats(server.http_url)
                cell = {"endpoint": key, **result, **stage_times(before, after, endpoint, stages)}
                cell["slowest"] = slowest(cell)
                cells.append(cell)
                lat = result["latency_ms"]
                say(
                    f"serving: {endpoint} {key} {protocol} x{clients}: "
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


def section(out_dir: Path, say: Say) -> dict:
    """Trains or finds the models, exports, serves, measures; the server always stops."""
    from PIL import Image

    from wsss.export.ensembles import configure_densecrf, repository_from_run
    from wsss.serving.server import TritonServer

    run, origin = find_run(out_dir, say)
    repository = out_dir / "serving_repo"
    shutil.rmtree(repository, ignore_errors=True)
    method = repository_from_run(run, repository, say=lambda line: None)
    say(f"serving: {run} ({origin}) exported to {repository}")
    payload = photo_jpeg()
    width, height = Image.open(io.BytesIO(payload)).size
    load_before = os.getloadavg()[0]
    log = out_dir / "runs" / "serving-triton.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    reference = reference_layout(repository)
    with TritonServer(repository, 0, 0, 0, log_path=log) as server:
        cells = measure(server, method, payload, say)
    layouts = torch_layouts(os.cpu_count() or 1)
    for layout in layouts:
        settings = {"impl": "torch", "device": "cpu", "threads": str(layout["threads"])}
        configure_densecrf(repository, settings, layout["instances"])
        say(f"serving: densecrf on the PyTorch CRF, {_layout(layout)}")
        torch_log = log.with_name(f"serving-triton-{layout['key']}.log")
        with TritonServer(repository, 0, 0, 0, log_path=torch_log) as server:
            endpoint = (layout["key"], "_segment", None, ["LABELS"], 16)
            cells += measure(server, method, payload, say, [endpoint])
    top = headline(cells)
    if top:
        say(f"serving: slowest stage of {top['model']}: {top['stage']} {top['share']:.0%}")
    return {
        "run": str(run),
        "run_origin": origin,
        "method": method,
        "image": {"name": IMAGE, "size": [height, width], "format": "JPEG", "bytes": len(payload)},
        "concurrency": list(CONCURRENCY),
        "reference_crf": reference,
        "torch_crf": layouts,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cells": cells,
        "slowest_stage": top,
    }


def _cell(results: dict, key: str, protocol: str, clients: int) -> dict | None:
    return next(
        (
            c
            for c in results["cells"]
            if (c["endpoint"], c["protocol"], c["clients"]) == (key, protocol, clients)
        ),
        None,
    )


def _layout(layout: dict) -> str:
    """ "1 instance x 2 threads"."""
    i, t = layout["instances"], layout["threads"]
    return f"{i} instance{'s' * (i != 1)} x {t} thread{'s' * (t != 1)}"


def _label(results: dict, key: str) -> str:
    """The endpoint's name in tables and plots."""
    layout = next((t for t in results.get("torch_crf", []) if t["key"] == key), None)
    if layout is not None:
        size = f"{layout['instances']}x{layout['threads']}"
        return f"`{results['method']}_segment` (CRF: torch, {size})"
    return LABELS[key].format(m=results["method"])


def _endpoint_keys(results: dict) -> list[str]:
    return [key for key, *_ in ENDPOINTS] + [t["key"] for t in results.get("torch_crf", [])]


def crf_comparison(results: dict) -> list[str]:
    """Per torch layout, one sentence against pydensecrf2: the densecrf stage and p50 at one
    client, throughput at the most clients (HTTP)."""

    def numbers(key: str) -> tuple | None:
        one = _cell(results, key, "http", 1)
        many = _cell(results, key, "http", max(results["concurrency"]))
        if one is None or many is None or "densecrf" not in one["stages"]:
            return None
        crf = one["stages"]["densecrf"]["compute_ms"]
        return crf, one["latency_ms"]["p50"], many["throughput_rps"], many["clients"]

    reference = numbers("segment")
    lines = []
    for layout in results.get("torch_crf", []):
        ours = numbers(layout["key"])
        if reference is None or ours is None:
            continue
        lines.append(
            f"PyTorch CRF (`impl: torch`), {_layout(layout)}: densecrf stage "
            f"{fmt(ours[0], 0)} ms against {fmt(reference[0], 0)} ms for pydensecrf2 "
            f"({_layout(results['reference_crf'])}), segment p50 {fmt(ours[1], 0)} against "
            f"{fmt(reference[1], 0)} ms (1 client, HTTP), {fmt(ours[2], 2)} against "
            f"{fmt(reference[2], 2)} req/s at {reference[3]} clients.\n"
        )
    return lines


def markdown(results: dict) -> str:
    method = results["method"]
    image = results["image"]
    load = results["load_average"]
    parts = [
        f"Model: {results['run_origin']} (`{method}`). One {image['size'][1]}x"
        f"{image['size'][0]} JPEG photo ({image['name']}, {image['bytes'] // 1024} KiB) per "
        "request; closed-loop clients, latency in ms measured by the client. 1-minute load "
        f"average {load[0]:.1f} before, {load[1]:.1f} after (other jobs share the CPU).\n"
    ]
    rows = []
    for cell in results["cells"]:
        lat = cell["latency_ms"]
        rows.append(
            [
                _label(results, cell["endpoint"]),
                cell["protocol"],
                cell["clients"],
                fmt(cell["throughput_rps"], 2),
                fmt(lat["p50"], 0),
                fmt(lat["p95"], 0),
                fmt(lat["p99"], 0),
                f"{cell['errors']}/{cell['requests']}",
            ]
        )
    header = ["endpoint", "protocol", "clients", "req/s", "p50", "p95", "p99", "errors"]
    parts.append(markdown_table(header, rows))
    top = results.get("slowest_stage")
    if top:
        parts.append(
            f"**Slowest stage of a `{top['model']}` request: {top['stage']}, "
            f"{fmt(top['ms'], 0)} ms = {top['share']:.0%} of the {fmt(top['latency_ms'], 0)} ms "
            f"end-to-end latency** (CRF on, 1 client, {top['protocol']}).\n"
        )
    parts += crf_comparison(results)
    for key in ("segment", "cam"):
        stage_rows = []
        for clients in (1, max(results["concurrency"])):
            cell = _cell(results, key, "http", clients)
            if cell is None:
                continue
            mean = cell["latency_ms"]["mean"] or 0.0
            for stage, t in cell["stages"].items():
                share = f"{t['total_ms'] / mean:.0%}" if mean else "–"
                stage_rows.append([stage, clients, fmt(t["compute_ms"]), fmt(t["queue_ms"]), share])
            stage_rows.append(["end to end (client mean)", clients, fmt(mean), "", "100%"])
        if stage_rows:
            parts.append(
                f"Per stage of {_label(results, key)} over HTTP (Triton statistics, mean "
                "ms per request; share = (compute + queue) / end-to-end):\n\n"
                + markdown_table(["stage", "clients", "compute", "queue", "share"], stage_rows)
            )
    return "\n".join(parts)


def plot(results: dict, path: Path) -> Path:
    """Throughput and p50 latency vs clients per endpoint and protocol; stage times at 1 client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_lat, ax_stage) = plt.subplots(1, 3, figsize=(13, 4.8))
    for key in _endpoint_keys(results):
        for protocol, style in zip(PROTOCOLS, ("-o", "--s"), strict=True):
            cells = [
                c for c in results["cells"] if (c["endpoint"], c["protocol"]) == (key, protocol)
            ]
            if not cells:
                continue
            label = f"{_label(results, key).replace('`', '')} {protocol}"
            clients = [c["clients"] for c in cells]
            ax_rate.plot(clients, [c["throughput_rps"] for c in cells], style, label=label)
            ax_lat.plot(clients, [c["latency_ms"]["p50"] or 0 for c in cells], style, label=label)
    for ax, ylabel in ((ax_rate, "requests / s"), (ax_lat, "p50 latency (ms)")):
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_xticks(results["concurrency"])
    ax_rate.set_yscale("log")
    ax_lat.set_yscale("log")
    names: list[str] = []
    colours: dict[str, tuple] = {}
    torch_keys = [t["key"] for t in results.get("torch_crf", [])]
    for key in ("cam", "segment_no_crf", "segment", *torch_keys):
        cell = _cell(results, key, "http", 1)
        if cell is None:
            continue
        names.append(_label(results, key).replace("`", ""))
        left = 0.0
        for stage, t in cell["stages"].items():
            new = stage not in colours
            colours.setdefault(stage, plt.cm.tab10(len(colours) % 10))
            ax_stage.barh(
                len(names) - 1, t["total_ms"], left=left, color=colours[stage],
                label=stage if new else None,
            )  # fmt: skip
            left += t["total_ms"]
    ax_stage.legend(fontsize=6)
    ax_stage.set_yticks(range(len(names)), names, fontsize=7)
    ax_stage.set_xlabel("ms per request (Triton statistics), 1 client, HTTP", fontsize=8)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.legend(*ax_rate.get_legend_handles_labels(), loc="lower left", ncol=4, fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
