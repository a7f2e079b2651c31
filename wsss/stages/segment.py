"""Stages seg and upper: DeepLab v2 on pseudo masks -> ``deeplab.pt``; on true masks (the fully
supervised upper bound, when the training split has ground truth) -> ``upper_bound.pt``.

The upper bound does not depend on the method: it is trained once per (dataset, DeepLab config)
and kept in ``$WSSS_CACHE/upper_bound/<key>.pt``; later runs of any method copy it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss import distributed
from wsss.checkpoint import make_backbone, save_checkpoint
from wsss.config import to_dict
from wsss.constants import IGNORE_INDEX
from wsss.data import default_cache_dir
from wsss.data.loaders import SegmentationDataset
from wsss.data.synthetic import GENERATOR_VERSION
from wsss.models.deeplab import DeepLabV2
from wsss.stages.affinity import WALK_OUTPUT
from wsss.stages.context import Context
from wsss.stages.pseudo import OUTPUT as PSEUDO
from wsss.trainer import train

OUTPUT = "deeplab.pt"
UPPER_BOUND = "upper_bound.pt"
# SegConfig fields that do not change the trained network (inference and evaluation only).
# ``epochs`` too: the upper bound's own count is part of the key.
_NOT_TRAINING = (
    "test_scales",
    "test_flip",
    "crf_preset",
    "upper_bound",
    "upper_bound_epochs",
    "epochs",
)

log = logging.getLogger(__name__)


def segmentation_loss(net, batch: dict, info) -> dict:
    """Cross-entropy of logits upsampled to the crop; masks int64 [B, H, W], 255 ignored."""
    logits = net(batch["image"])
    logits = F.interpolate(logits, batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
    return {"ce": F.cross_entropy(logits, batch["mask"], ignore_index=IGNORE_INDEX)}


def mask_dir(ctx: Context) -> Path:
    """The pseudo masks DeepLab trains on: the random-walk masks with --refine affinity."""
    return ctx.path(WALK_OUTPUT if ctx.cfg.refine == "affinity" else PSEUDO)


def _train(ctx: Context, output: str, pseudo: bool, epochs: int) -> dict:
    cfg = ctx.cfg.seg
    torch.manual_seed(cfg.seed)  # the ASPP head's initialisation belongs to the run's seed
    model = DeepLabV2(make_backbone(cfg.backbone), len(ctx.class_names), cfg.aspp_rates)
    dataset = SegmentationDataset(
        ctx.source,
        ctx.ids(ctx.cfg.data.train_split),
        crop=cfg.crop,
        scale_range=cfg.scale_range,
        mask_dir=mask_dir(ctx) if pseudo else None,
    )
    state = ctx.path(f".{output}.state.pt")
    losses = train(
        model,
        dataset,
        segmentation_loss,
        cfg.optim,
        epochs=epochs,
        batch_size=cfg.batch_size,
        device=ctx.device,
        state_path=state,
        seed=cfg.seed,
        workers=ctx.cfg.data.workers,
        desc="deeplab" if pseudo else "upper bound",
    )
    if distributed.is_main():
        save_checkpoint(ctx.path(output), model.cpu(), "deeplab", ctx.cfg, ctx.class_names)
        state.unlink(missing_ok=True)
    return {"final_losses": losses, "images": len(dataset)}


def run(ctx: Context) -> dict:
    return _train(ctx, OUTPUT, pseudo=True, epochs=ctx.cfg.seg.epochs)


def upper_bound_wanted(ctx: Context) -> bool:
    return ctx.cfg.seg.upper_bound and ctx.source.has_masks(ctx.cfg.data.train_split)


def upper_bound_cache(ctx: Context, epochs: int) -> Path:
    """``$WSSS_CACHE/upper_bound/<key>.pt``: key = hash of the data and DeepLab training config."""
    seg = {k: v for k, v in to_dict(ctx.cfg.seg).items() if k not in _NOT_TRAINING}
    data = to_dict(replace(ctx.cfg.data, workers=0))
    blob = json.dumps(
        {"data": data, "generator": GENERATOR_VERSION, "seg": seg, "epochs": epochs},
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return default_cache_dir() / "upper_bound" / f"{ctx.cfg.data.name}-{key}.pt"


def run_upper_bound(ctx: Context) -> dict:
    epochs = ctx.cfg.seg.upper_bound_epochs or ctx.cfg.seg.epochs
    cached = upper_bound_cache(ctx, epochs)
    if cached.exists():
        log.info("upper bound: reusing %s (same data and DeepLab config)", cached)
        if distributed.is_main():
            shutil.copyfile(cached, ctx.path(UPPER_BOUND))
        return {"cached": str(cached), "epochs": epochs}
    result = _train(ctx, UPPER_BOUND, pseudo=False, epochs=epochs)
    if distributed.is_main():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        shutil.copyfile(ctx.path(UPPER_BOUND), partial)
        partial.replace(cached)
    return {**result, "epochs": epochs}
