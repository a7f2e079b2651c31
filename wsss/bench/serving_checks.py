"""The serving section's checks beside the load cells (:mod:`wsss.bench.serving`).

- :func:`in_process`: the segment and CAM work of one request (decode, preprocess, the same
  ONNX network with the same session settings, the densecrf model's CRF or the CAM resize)
  timed in this one Python process: what Triton adds is served p50 / in-process p50.
- :func:`agreement`: served labels against the reference pipeline (pydensecrf2, the preset's
  full settings, at the network resolution, in process) on the benchmark's validation images
  and the real photos of :mod:`wsss.imagenet.photos`; mIoU of both on the validation images.
- :func:`read_metrics` / :func:`metrics_times`: Triton's Prometheus endpoint (``:8002/metrics``)
  per model between two scrapes.
- :func:`set_queue_delay` / :func:`previous_layout`: the configurations the section compares.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

IN_PROCESS_REPEATS = 16
METRIC_KEYS = {
    "requests": "nv_inference_request_success",
    "inferences": "nv_inference_count",
    "executions": "nv_inference_exec_count",
    "queue_us": "nv_inference_queue_duration_us",
    "input_us": "nv_inference_compute_input_duration_us",
    "infer_us": "nv_inference_compute_infer_duration_us",
    "output_us": "nv_inference_compute_output_duration_us",
}
_SAMPLE = re.compile(r'^(\w+)\{model="([^"]+)",version="[^"]*"\}\s+([0-9.eE+-]+)$')


def json_config(model_dir: Path) -> dict:
    """A model's ``config.pbtxt`` as the JSON dict Triton hands its backends."""
    from google.protobuf import json_format

    from wsss.export.ensembles import read_config

    config = read_config(model_dir / "config.pbtxt")
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def session(model_dir: Path):
    """The model's ONNX Runtime session, with the settings the served backend gives it."""
    import onnxruntime as ort

    from wsss.serving.ort_session import session_options

    options = session_options(json_config(model_dir))
    return ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def preprocess_sides(repository: Path) -> tuple[int, int]:
    """(max_side, min_side) of the repository's ``preprocess`` model: its resize policy."""
    pre = json_config(repository / "preprocess")["parameters"]
    return int(pre["max_side"]["string_value"]), int(pre["min_side"]["string_value"])


def segment_networks(repository: Path, method: str) -> dict:
    """Name -> ONNX session of the networks behind ``<name>_segment``: the method's DeepLab
    and, when exported, the imagenet source's ``imagenet_cam_seg``."""
    networks = {method: session(repository / f"{method}_deeplab")}
    if (repository / "imagenet_cam_seg").is_dir():
        networks["imagenet"] = session(repository / "imagenet_cam_seg")
    return networks


def network_probs(network, image: np.ndarray, sides: tuple[int, int]) -> np.ndarray:
    """The served network's probabilities [K, h, w] of an RGB image, resized as served."""
    from wsss.serving.imaging import network_input, network_size

    x = network_input(image, network_size(*image.shape[:2], *sides))
    return network.run(None, {network.get_inputs()[0].name: x})[0][0]


def class_names(repository: Path, method: str) -> list[str]:
    """The class names (background first) of ``<method>_segment``."""
    config = json_config(repository / f"{method}_segment")
    return json.loads(config["parameters"]["class_names"]["string_value"])


def densecrf_instances(repository: Path) -> int:
    """The instance count of the repository's densecrf config."""
    return int(json_config(repository / "densecrf")["instance_group"][0].get("count", 1))


def served_crf(repository: Path):
    """The densecrf model's settings as an instance of it resolves them on this host."""
    from wsss.serving.backend import config_parameters
    from wsss.serving.models.densecrf import model_settings

    parameters = config_parameters(json_config(repository / "densecrf"))
    return model_settings(parameters, instances=densecrf_instances(repository))


def _median_ms(samples: list[float]) -> float:
    return round(float(np.median(samples)) * 1000, 1)


def in_process(repository: Path, method: str, payload: bytes) -> dict:
    """Median ms of the segment and CAM work of one request in this process, by part."""
    import torch

    from wsss.serving.imaging import decode_image, network_input, network_size
    from wsss.serving.maps import resize_bilinear

    crf = served_crf(repository)
    threads = torch.get_num_threads()
    torch.set_num_threads(crf.threads)
    sides = preprocess_sides(repository)
    deeplab, cam_net = (session(repository / f"{method}{s}") for s in ("_deeplab", "_cam_net"))
    parts: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def prepare():
        rgb = timed("decode", decode_image, payload)
        size = network_size(*rgb.shape[:2], *sides)
        return rgb, timed("preprocess", network_input, rgb, size)

    def segment():
        rgb, x = prepare()
        (probs,) = timed("deeplab", deeplab.run, None, {deeplab.get_inputs()[0].name: x})
        timed("densecrf", crf.refine, rgb, probs[0])

    def cam():
        rgb, x = prepare()
        scores, cams = timed("cam_net", cam_net.run, None, {cam_net.get_inputs()[0].name: x})
        timed("cam_post", resize_bilinear, cams[0], rgb.shape[:2])

    out = {}
    try:
        for name, work in (("segment", segment), ("cam", cam)):
            for _ in range(2):
                work()  # warm-up
            parts.clear()
            for _ in range(IN_PROCESS_REPEATS):
                timed("total", work)
            out[name] = {part: _median_ms(v) for part, v in parts.items()}
    finally:
        torch.set_num_threads(threads)
    out["settings"] = {
        "crf_impl": crf.params.impl, "crf_threads": crf.threads, "crf_max_side": crf.max_side,
        "repeats": IN_PROCESS_REPEATS,
    }  # fmt: skip
    return out


def _png(image: np.ndarray) -> bytes:
    """Lossless bytes: the server decodes exactly the pixels the reference sees."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _served_labels(http_url: str, model: str, data: bytes) -> np.ndarray:
    import tritonclient.http as tc

    client = tc.InferenceServerClient(http_url, network_timeout=300)
    try:
        tensor = tc.InferInput("IMAGE_BYTES", [len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8))
        outputs = [tc.InferRequestedOutput("LABELS")]
        return client.infer(model, [tensor], outputs=outputs).as_numpy("LABELS")
    finally:
        client.close()


def agreement(http_url: str, repository: Path, method: str, val_images) -> dict:
    """Served ``<network>_segment`` labels vs the reference pipeline, per image group.

    ``val_images``: (image uint8 [H, W, 3], mask or None) pairs of the benchmark's validation
    split, sent to ``<method>_segment``; the photos go to it and to ``imagenet_segment`` when
    that is in ``repository``. Returns per group: pixels, agreement, the worst image's
    agreement; for the validation images also mIoU of served and reference labels.
    """
    from wsss.imagenet.photos import PHOTOS
    from wsss.metrics import SegmentationMeter
    from wsss.serving.models.densecrf import refine_labels

    full = replace(served_crf(repository).params, impl="pydensecrf")
    sides = preprocess_sides(repository)
    networks = segment_networks(repository, method)
    val = [(f"val {i}", image, mask, method) for i, (image, mask) in enumerate(val_images)]
    groups = {f"{method}: benchmark val": val}
    for network in networks:
        groups[f"{network}: photos"] = [(p.name, p.load(), None, network) for p in PHOTOS]
    names = class_names(repository, method)
    results = {}
    for group, items in groups.items():
        agree = total = 0
        worst = (2.0, "")
        meters = {k: SegmentationMeter(names) for k in ("served", "reference")}
        for name, image, mask, network in items:
            data = _png(image)
            served = _served_labels(http_url, f"{network}_segment", data)
            probs = network_probs(networks[network], image, sides)
            reference, _ = refine_labels(image, probs, full)
            same = served == reference
            agree, total = agree + int(same.sum()), total + same.size
            worst = min(worst, (float(same.mean()), name))
            if mask is not None:
                meters["served"].update(mask, served)
                meters["reference"].update(mask, reference)
        row = {
            "images": len(items), "pixels": total, "agreement": round(agree / total, 5),
            "worst": {"image": worst[1], "agreement": round(worst[0], 5)},
        }  # fmt: skip
        if any(mask is not None for _, _, mask, _ in items):
            row["miou"] = {k: m.summary()["miou"] for k, m in meters.items()}
        results[group] = row
    agree = sum(r["agreement"] * r["pixels"] for r in results.values())
    pixels = sum(r["pixels"] for r in results.values())
    return {"reference": "pydensecrf2, full settings, network resolution", "groups": results,
            "agreement": round(agree / pixels, 5)}  # fmt: skip


def read_metrics(metrics_url: str) -> dict[tuple[str, str], float]:
    """(key of METRIC_KEYS, model) -> counter value, from Triton's Prometheus endpoint."""
    url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}"
    url = url if url.rstrip("/").endswith("/metrics") else f"{url.rstrip('/')}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = {v: k for k, v in METRIC_KEYS.items()}
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and match.group(1) in names:
            key = (names[match.group(1)], match.group(2))
            out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


def metrics_times(before: dict, after: dict, models: list[str]) -> dict[str, dict]:
    """Per model between two scrapes: requests, executions, mean queue and compute ms."""
    out = {}
    for model in models:

        def delta(key: str, model: str = model) -> float:
            return after.get((key, model), 0.0) - before.get((key, model), 0.0)

        requests = delta("requests")
        if requests <= 0:
            continue
        compute = delta("input_us") + delta("infer_us") + delta("output_us")
        out[model] = {
            "requests": int(requests),
            "inferences": int(delta("inferences")),
            "executions": int(delta("executions")),
            "queue_ms": round(delta("queue_us") / requests / 1000, 2),
            "compute_ms": round(compute / requests / 1000, 2),
        }
    return out


def set_queue_delay(repository: Path, method: str, microseconds: int) -> None:
    """Dynamic batching's ``max_queue_delay_microseconds`` of the method's two networks."""
    from google.protobuf import text_format

    from wsss.export.ensembles import read_config

    for suffix in ("_cam_net", "_deeplab"):
        path = repository / f"{method}{suffix}" / "config.pbtxt"
        config = read_config(path)
        config.dynamic_batching.max_queue_delay_microseconds = microseconds
        header = "".join(line for line in path.read_text().splitlines(True) if line[:1] == "#")
        path.write_text(header + text_format.MessageToString(config))


PREVIOUS = {"impl": "pydensecrf", "max_side": "0", "threads": "1", "instances": "2"}


def previous_layout(repository: Path, method: str) -> dict:
    """Rewrites ``repository`` to the configuration measured on 2026-11-21: densecrf on
    pydensecrf2 (2 instances, uncapped), the networks on one ONNX Runtime thread."""
    from google.protobuf import text_format

    from wsss.export.ensembles import configure_densecrf, read_config

    configure_densecrf(repository, PREVIOUS, int(PREVIOUS["instances"]))
    for suffix in ("_cam_net", "_deeplab"):
        path = repository / f"{method}{suffix}" / "config.pbtxt"
        config = read_config(path)
        config.parameters["intra_op_thread_count"].string_value = "1"
        config.ClearField("model_warmup")
        path.write_text(text_format.MessageToString(config))
    return {"densecrf": PREVIOUS, "networks": {"intra_op_thread_count": 1, "warm-up": False}}
