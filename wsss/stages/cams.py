"""Stage cam: multi-scale + flip CAMs of the training images -> ``cams/<id>.npz``.

Each file holds ``keys`` (int [K], the image's classes 1..C from its image-level labels),
``cam`` (float16 [K, H, W], normalised per class at the image's resolution) and ``maxima``
(float32 [C], every class's fused CAM maximum before normalisation: the report's health block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsss.cam import multiscale_cam, normalize_cams
from wsss.checkpoint import load_classifier
from wsss.data.loaders import image_to_tensor
from wsss.io import atomic_save_npz
from wsss.stages.context import Context, run_per_image

OUTPUT = "cams"


def load_cams(run_dir: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys int [K], normalised cams float32 [K, H, W]) of one image."""
    with np.load(run_dir / OUTPUT / f"{image_id}.npz") as data:
        return data["keys"], data["cam"].astype(np.float32)


def load_maxima(run_dir: Path, image_id: str) -> np.ndarray | None:
    """float32 [C]: each class's CAM maximum before normalisation (None in older runs)."""
    with np.load(run_dir / OUTPUT / f"{image_id}.npz") as data:
        return data["maxima"] if "maxima" in data.files else None


def run(ctx: Context) -> dict:
    cfg = ctx.cfg.cam
    model, _ = load_classifier(ctx.path("classifier.pt"))
    model.to(ctx.device)
    ids = ctx.union_ids(ctx.cfg.data.train_split, ctx.cfg.data.seed_split)

    def work(image_id: str, folder: Path) -> None:
        sample = ctx.source.load(image_id)
        keys = np.flatnonzero(sample.labels) + 1
        cams = multiscale_cam(
            model, image_to_tensor(sample.image).to(ctx.device), cfg.scales, cfg.flip
        )
        maxima = cams.amax(dim=(1, 2)).float().cpu().numpy()
        cams = normalize_cams(cams[torch.as_tensor(keys - 1, device=cams.device)], cfg.normalize)
        atomic_save_npz(
            folder / f"{image_id}.npz",
            keys=keys,
            cam=cams.cpu().numpy().astype(np.float16),
            maxima=maxima,
        )

    run_per_image(ctx, OUTPUT, ids, work)
    return {"images": len(ids)}
