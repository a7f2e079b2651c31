"""Served CRF settings against the reference: which speed-ups keep the labels.

    python -m wsss.bench.crf_cap --repository SERVING_REPO --run RUN_DIR --out crf_cap.json

The reference is pydensecrf2 with the ``deeplab`` preset at full settings (10 iterations) at
the network resolution, as the in-process pipeline runs it. Each variant (the PyTorch CRF with
fewer iterations, or at a capped longest side with the kernels scaled) runs on the same network
probabilities: the real photos of :mod:`wsss.imagenet.photos` through ``<method>_deeplab`` and
``imagenet_cam_seg`` of ``SERVING_REPO`` (ONNX), and the validation images of the run's
built-in benchmark through its DeepLab. Reported per variant: pixel agreement with the
reference (all images, and the worst image), DeepLab + CRF mIoU on the validation images, and
the variant's CRF time over all images (one thread). A study, not a test: nothing fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

# (iterations, max_side, scale the Gaussian kernel with the bilateral one)
VARIANTS = (
    (10, 0, False),
    (5, 0, False),
    (10, 448, True),
    (10, 384, True),
    (10, 384, False),
    (10, 320, False),
)


def variant_name(iterations: int, max_side: int, gaussian: bool) -> str:
    side = f"side <= {max_side}" if max_side else "network resolution"
    kernels = (
        "" if not max_side else (", both kernels scaled" if gaussian else ", Gaussian >= 1 px")
    )
    return f"torch, {iterations} it, {side}{kernels}"


def run_variant(image, probs, params, iterations: int, max_side: int, gaussian: bool):
    """Labels uint8 [H, W] of one variant: the served path (``refine_labels``) or, with
    ``gaussian``, the same with the Gaussian kernel scaled like the bilateral one."""
    from wsss.refine.crf_select import dense_crf
    from wsss.serving.imaging import network_size, resize_rgb
    from wsss.serving.maps import resize_bilinear, upsample_argmax
    from wsss.serving.models.densecrf import refine_labels

    params = replace(params, impl="torch", device="cpu", iterations=iterations)
    h, w = probs.shape[1:]
    if not gaussian or not 0 < max_side < max(h, w):
        return refine_labels(image, probs, params, max_side)[0]
    size = network_size(h, w, max_side=max_side, min_side=1)
    f = max(size) / max(h, w)
    params = replace(
        params, gaussian_sxy=params.gaussian_sxy * f, bilateral_sxy=params.bilateral_sxy * f
    )
    refined = dense_crf(resize_rgb(image, size).copy(), resize_bilinear(probs, size), params)
    return upsample_argmax(refined, image.shape[:2])


def study(repository: Path, run: Path, method: str = "cam") -> dict:
    import torch

    from wsss.bench.serving import validation_images
    from wsss.bench.serving_checks import (
        class_names,
        network_probs,
        preprocess_sides,
        segment_networks,
    )
    from wsss.imagenet.photos import PHOTOS
    from wsss.metrics import SegmentationMeter
    from wsss.refine.crf import CRF_PRESETS
    from wsss.serving.models.densecrf import refine_labels

    torch.set_num_threads(1)
    reference = replace(CRF_PRESETS["deeplab"], impl="pydensecrf")
    networks = segment_networks(repository, method)
    sides = preprocess_sides(repository)
    items = [(f"{p.name}/{n}", p.load(), None, n) for p in PHOTOS for n in networks]
    val = validation_images(run)
    items += [(f"val {i}", image, mask, method) for i, (image, mask) in enumerate(val)]
    names = class_names(repository, method)
    rows = {v: {"agree": 0, "pixels": 0, "worst": (2.0, ""), "seconds": 0.0,
                "meter": SegmentationMeter(names)} for v in VARIANTS}  # fmt: skip
    ref_meter = SegmentationMeter(names)
    for name, image, mask, network in items:
        probs = network_probs(networks[network], image, sides)
        labels = refine_labels(image, probs, reference)[0]
        if mask is not None:
            ref_meter.update(mask, labels)
        for variant, row in rows.items():
            start = time.process_time()
            got = run_variant(image, probs, reference, *variant)
            row["seconds"] += time.process_time() - start
            same = got == labels
            row["agree"] += int(same.sum())
            row["pixels"] += same.size
            row["worst"] = min(row["worst"], (float(same.mean()), name))
            if mask is not None:
                row["meter"].update(mask, got)
    return {
        "reference": "pydensecrf2, deeplab preset, 10 iterations, network resolution",
        "images": {"photos": len(PHOTOS) * len(networks), "val": len(val)},
        "reference_val_miou": ref_meter.summary()["miou"] if val else None,
        "variants": [
            {
                "variant": variant_name(*v),
                "iterations": v[0],
                "max_side": v[1],
                "agreement": round(r["agree"] / r["pixels"], 5),
                "worst": {"image": r["worst"][1], "agreement": round(r["worst"][0], 5)},
                "val_miou": r["meter"].summary()["miou"] if val else None,
                "crf_cpu_seconds": round(r["seconds"], 2),
            }
            for v, r in rows.items()
        ],  # fmt: skip
    }


def markdown(results: dict) -> str:
    from wsss.bench.common import fmt, markdown_table

    rows = [
        [v["variant"], f"{v['agreement']:.2%}",
         f"{v['worst']['image']} {v['worst']['agreement']:.2%}",
         fmt(v["val_miou"], 2), fmt(v["crf_cpu_seconds"], 1)]
        for v in results["variants"]
    ]  # fmt: skip
    return (
        f"Against {results['reference']} (val mIoU {fmt(results['reference_val_miou'], 2)}); "
        f"{results['images']['photos']} photo/network pairs and {results['images']['val']} "
        "validation images:\n\n"
        + markdown_table(["variant", "agree (all)", "worst image", "val mIoU", "CRF CPU s"], rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="an exported repository")
    parser.add_argument("--run", type=Path, required=True, help="the run it was exported from")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)
    results = study(args.repository, args.run, args.method)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
