"""CAM inference: multi-scale + flip fusion, normalisation, and CAMs -> seed labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.inference_mode()
def multiscale_cam(
    model: torch.nn.Module,
    image: torch.Tensor,
    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
    flip: bool = True,
) -> torch.Tensor:
    """Sum of ReLU'd CAMs over scales and flips at input size: RGB [3, H, W] -> [C, H, W].

    Each pass is resized to the image bilinearly before summing (IRN ``make_cam``); the flipped
    pass is flipped back. ``model.cam`` returns ReLU'd maps [B, C, h, w].
    """
    _, h, w = image.shape
    batch = image[None]
    if flip:
        batch = torch.cat([batch, batch.flip(-1)])
    total = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = batch if s == 1.0 else F.interpolate(batch, size, mode="bilinear", align_corners=False)
        cams = F.interpolate(model.cam(x), (h, w), mode="bilinear", align_corners=False)
        fused = cams[0] + cams[1].flip(-1) if flip else cams[0]
        total = fused if total is None else total + fused
    return total


def normalize_cams(cams: torch.Tensor | np.ndarray, mode: str = "max", eps: float = 1e-5):
    """Per-class normalisation to [0, 1]; cams [K, H, W] -> [K, H, W].

    ``max``: cam / (max + eps) (IRN, PSA). ``minmax``: (cam - min) / (max - min + eps) (SEAM, CPN).
    """
    lib = torch if isinstance(cams, torch.Tensor) else np
    flat = cams.reshape(cams.shape[0], -1)
    if mode == "max":
        top = flat.max(1)[0] if lib is torch else flat.max(1)
        return cams / (top.reshape(-1, 1, 1) + eps)
    if mode == "minmax":
        low = flat.min(1)[0] if lib is torch else flat.min(1)
        top = flat.max(1)[0] if lib is torch else flat.max(1)
        low, top = low.reshape(-1, 1, 1), top.reshape(-1, 1, 1)
        return lib.clip(cams - low, 0, None) / (top - low + eps)
    raise ValueError(f"unknown CAM normalisation {mode!r} (max | minmax)")


def cams_to_labels(cams: np.ndarray, keys: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Seed labels with a constant background score (IRN ``eval_cam``).

    cams [K, H, W] normalised maps of the image's K present classes; keys [K] their class
    indices (1..C). Returns int64 [H, W]: 0 where every map is at most ``bg_threshold``, else
    the class whose map is largest.
    """
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], dtype=np.int64)
    top = cams.max(0)
    label = np.asarray(keys, dtype=np.int64)[cams.argmax(0)]
    return np.where(top > bg_threshold, label, 0)


def sweep_labels(cams: np.ndarray, keys: np.ndarray, thresholds: np.ndarray):
    """Yields (threshold, labels [H, W]) for each background threshold, sharing one argmax."""
    if len(keys) == 0:
        zeros = np.zeros(cams.shape[1:], dtype=np.int64)
        for t in thresholds:
            yield t, zeros
        return
    top = cams.max(0)
    label = np.asarray(keys, dtype=np.int64)[cams.argmax(0)]
    for t in thresholds:
        yield t, np.where(top > t, label, 0)
