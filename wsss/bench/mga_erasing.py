"""How much of the object does KTSE's MGA erase? (KTSE Sec. 3.4, its erase threshold)

MGA erases the anchor where its normalised CAM reaches a threshold (0.6, "following AEFT ... to
mask the most discriminative region") and asks the erased image to keep the anchor's class
confidence (Eq. 8). That premise holds only if the threshold erases a part of the object and
leaves the rest to find. This probe measures it on a trained classifier: every training image
is erased exactly as in training (``ktse_losses.erase_masks`` on the network's own CAM, the mean
colour as fill), and for each threshold it reports the share of the true object pixels erased
and the present classes' probability (sigmoid of the class score) before and after.

    python -m wsss.bench.mga_erasing runs/ktse/seed0 runs/cam/seed0 --thresholds 0.6,0.8,0.9

prints one JSON object per run and threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsss.bench.common import print_probe_results
from wsss.methods.ktse import KTSEConfig
from wsss.methods.ktse_losses import erase_images, erase_masks


@torch.no_grad()
def erase_record(
    model: nn.Module,
    image: torch.Tensor,
    labels: torch.Tensor,
    mask: np.ndarray,
    threshold: float,
    norm: str = KTSEConfig.train_norm,
) -> dict[str, float]:
    """One image erased at ``threshold``: image [1, 3, H, W] RGB 0..255, labels [1, C] multi-hot,
    mask uint8 [H, W] (0 background, k class k, 255 ignore). Returns the share of object pixels
    erased, the erased share of the image, and the mean present-class probability of the anchor
    and of the erased image."""
    out = model(image)
    keep, _ = erase_masks(out["cams"], labels, image.shape[-2:], threshold, norm)
    erased = erase_images(image, keep, model.normalize.mean)
    present = labels[0] > 0.5
    gone = ~keep[0, 0].numpy()
    objects = (mask > 0) & (mask < 255)
    return {
        "object_erased": float((gone & objects).sum() / max(objects.sum(), 1)),
        "image_erased": float(gone.mean()),
        "anchor_probability": torch.sigmoid(out["logits"][0, present]).mean().item(),
        "erased_probability": torch.sigmoid(model(erased)["logits"][0, present]).mean().item(),
    }


def summarize(records: list[dict[str, float]]) -> dict:
    """Mean / quartiles of the object share erased, the share of images with >= 90 % of their
    objects erased, and the mean probabilities (and how often the erased image stays above 0.5)."""
    if not records:
        raise ValueError("no image with a present class")
    share = np.array([r["object_erased"] for r in records])
    erased_p = np.array([r["erased_probability"] for r in records])
    return {
        "images": len(records),
        "object_erased_mean": round(float(share.mean()), 3),
        "object_erased_q25_median_q75": [
            round(float(np.percentile(share, q)), 3) for q in (25, 50, 75)
        ],
        "images_mostly_erased": round(float((share >= 0.9).mean()), 3),
        "image_erased_mean": round(float(np.mean([r["image_erased"] for r in records])), 3),
        "anchor_probability": round(float(np.mean([r["anchor_probability"] for r in records])), 3),
        "erased_probability": round(float(erased_p.mean()), 3),
        "erased_still_recognised": round(float((erased_p > 0.5).mean()), 3),
    }


def probe_run(run: Path, thresholds: tuple[float, ...]) -> list[dict]:
    """Load ``run``'s classifier and its dataset's training images; erase at each threshold."""
    from wsss.checkpoint import load_classifier
    from wsss.data.loaders import image_to_tensor
    from wsss.pipeline import load_context

    model, _ = load_classifier(run / "classifier.pt")
    ctx = load_context(run)
    # The run's MGA normalisation; a run of another method is erased with KTSE's default.
    norm = getattr(ctx.method.config, "train_norm", KTSEConfig.train_norm)
    samples = [ctx.source.load(i) for i in ctx.ids("train")]
    samples = [s for s in samples if s.mask is not None and s.labels.any()]
    if not samples:
        raise ValueError(f"{run}: no training image with a true mask and a present class")
    results = []
    for threshold in thresholds:
        records = [
            erase_record(
                model,
                image_to_tensor(s.image)[None],
                torch.from_numpy(s.labels)[None],
                s.mask,
                threshold,
                norm,
            )
            for s in samples
        ]
        results.append({"run": str(run), "threshold": threshold, **summarize(records)})
    return results


def parse_thresholds(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must lie in (0, 1], got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.bench.mga_erasing",
        description="Measure how much of each object KTSE's MGA erasing removes at given "
        "thresholds, and whether the erased image still scores its classes, for trained "
        "classifiers (run folders with classifier.pt).",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (train/run.py --out)")
    parser.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=(0.6, 0.8, 0.9),
        help="comma-separated erase thresholds on the normalised CAM (default 0.6,0.8,0.9)",
    )
    args = parser.parse_args(argv)
    return print_probe_results(args.runs, lambda run: probe_run(run, args.thresholds))


if __name__ == "__main__":
    sys.exit(main())
