"""Stage eval: score every stage against ground truth -> ``report.json`` and ``figures/``.

Seeds and pseudo masks are scored on ``data.seed_split`` (VOC: train), DeepLab on
``data.val_split`` (VOC: val), as the papers do. The best swept background threshold uses the
ground truth to choose it, so the report labels it GT-assisted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from wsss import distributed, health
from wsss.cam import cams_to_labels, sweep_labels
from wsss.checkpoint import load_deeplab
from wsss.config import crf_params
from wsss.data.loaders import image_to_tensor
from wsss.diagnostics import RegionCounter, has_regions, load_regions
from wsss.io import atomic_write_json, load_label_png
from wsss.logs import progress
from wsss.metrics import SegmentationMeter
from wsss.models.deeplab import predict_probs
from wsss.refine.crf_select import dense_crf
from wsss.refine.pseudo import pseudo_mask
from wsss.stages import affinity, classify
from wsss.stages.cams import load_cams, load_maxima
from wsss.stages.context import Context
from wsss.stages.segment import OUTPUT as DEEPLAB
from wsss.stages.segment import UPPER_BOUND
from wsss.visualize import colorize_mask, heatmap, montage, overlay

OUTPUT = "report.json"
log = logging.getLogger("wsss")


def _scored_ids(ctx: Context, split: str) -> list[str]:
    return ctx.ids(split) if ctx.source.has_masks(split) else []


def evaluate_seeds_and_pseudo(ctx: Context) -> dict:
    """Seed mIoU (fixed and swept threshold) and pseudo-mask mIoU (threshold, CRF, written)."""
    names = ctx.class_names
    ids = _scored_ids(ctx, ctx.cfg.data.seed_split)
    if not ids:
        log.warning("no ground truth for split %r: seeds not scored", ctx.cfg.data.seed_split)
        return {}
    cam_cfg, p = ctx.cfg.cam, ctx.cfg.pseudo
    thresholds = np.round(np.arange(*cam_cfg.sweep), 4)
    fixed, thresh, crf, written = (SegmentationMeter(names) for _ in range(4))
    sweep = [SegmentationMeter(names) for _ in thresholds]
    crf_preset = crf_params(p.crf_preset, ctx.cfg.crf)
    ignored = total = 0
    regions = RegionCounter() if has_regions(ctx.source.root) else None
    for image_id in progress(ids, "eval seeds"):
        sample = ctx.source.load(image_id)
        keys, cams = load_cams(ctx.out, image_id)
        seed = cams_to_labels(cams, keys, cam_cfg.bg_threshold)
        fixed.update(sample.mask, seed)
        if regions is not None:
            regions.update(image_id, sample.mask, seed, load_regions(ctx.source.root, image_id))
        for meter, (_, labels) in zip(sweep, sweep_labels(cams, keys, thresholds), strict=True):
            meter.update(sample.mask, labels)
        common = dict(bg_threshold=cam_cfg.bg_threshold, crf_gt_prob=p.crf_gt_prob)
        thresh.update(sample.mask, pseudo_mask(sample.image, cams, keys, **common))
        crf.update(sample.mask, pseudo_mask(sample.image, cams, keys, crf=crf_preset, **common))
        mask = load_label_png(ctx.path("pseudo") / f"{image_id}.png")
        written.update(sample.mask, mask)
        ignored += int((mask == 255).sum())
        total += mask.size
    best = int(np.argmax([m.miou() for m in sweep]))
    diagnostics = {}
    if regions is not None:
        diagnostics["seed_diagnostics"] = regions.summary()
        write_failure_figures(ctx, regions)
    return diagnostics | {
        "seed_miou": fixed.summary()["miou"],
        "seed_bg_threshold": cam_cfg.bg_threshold,
        "seed_miou_best_gt_assisted": sweep[best].summary()["miou"],
        "seed_best_bg_threshold_gt_assisted": float(thresholds[best]),
        "seed_miou_curve": {
            f"{t:.2f}": m.summary()["miou"] for t, m in zip(thresholds, sweep, strict=True)
        },
        "pseudo_miou": written.summary()["miou"],
        "pseudo_mode": p.mode + (" + ignore" if p.ignore_uncertain else ""),
        "pseudo_ignored_fraction": round(ignored / max(total, 1), 4),
        "pseudo_miou_threshold": thresh.summary()["miou"],
        "pseudo_miou_crf": crf.summary()["miou"],
        "per_class_iou": {
            "seed": fixed.summary()["per_class"],
            "pseudo": written.summary()["per_class"],
        },
        "seed_images": len(ids),
    }


def training_health(ctx: Context) -> dict:
    """The ``health`` block: last-epoch classification loss against the label prior (from
    ``training.json``) and CAM health over the training split (from the stored CAM maxima)."""
    history = classify.load_history(ctx)
    epochs = history.get("epochs") or [{}]
    cls_loss = classify.classification_term(epochs[-1].get("losses", {}))
    maxima, labels = [], []
    n_classes = len(ctx.class_names) - 1
    for image_id in ctx.ids(ctx.cfg.data.train_split):
        if not (ctx.path("cams") / f"{image_id}.npz").exists():
            continue
        top = load_maxima(ctx.out, image_id)
        if top is None:
            continue
        keys, _ = load_cams(ctx.out, image_id)
        label = np.zeros(n_classes)
        label[np.asarray(keys, dtype=np.int64) - 1] = 1
        maxima.append(top)
        labels.append(label)
    cams = health.cam_maxima_health(maxima, labels)
    return health.health_block(cls_loss, history.get("label_prior_loss"), cams)


def _cam_figure(ctx: Context, ids: list[str], path, with_pseudo: bool) -> None:
    """One row per image: image, ground truth, max CAM, seed (and pseudo mask)."""
    rows = []
    for image_id in ids:
        sample = ctx.source.load(image_id)
        keys, cams = load_cams(ctx.out, image_id)
        top = cams.max(0) if len(keys) else np.zeros(sample.image.shape[:2], np.float32)
        gt = sample.mask if sample.mask is not None else np.zeros_like(top, dtype=np.uint8)
        seed = cams_to_labels(cams, keys, ctx.cfg.cam.bg_threshold)
        row = [
            sample.image,
            overlay(sample.image, colorize_mask(gt)),
            overlay(sample.image, heatmap(top)),
            overlay(sample.image, colorize_mask(seed)),
        ]
        if with_pseudo:
            pseudo = load_label_png(ctx.path("pseudo") / f"{image_id}.png")
            row.append(overlay(sample.image, colorize_mask(pseudo)))
        rows.append(row)
    if rows:
        titles = ["image", "ground truth", "CAM (max)", "seed", "pseudo mask"][: len(rows[0])]
        montage(rows, titles).save(path)


def write_failure_figures(ctx: Context, regions: RegionCounter, n: int = 4) -> None:
    """The seeds most hurt by co-occurring context and by under-activation (built-in benchmark)."""
    folder = ctx.path("figures")
    folder.mkdir(exist_ok=True)
    _cam_figure(ctx, regions.worst_over_activation(n), folder / "co_occurrence.png", False)
    _cam_figure(ctx, regions.worst_under_activation(n), folder / "under_activation.png", False)


def evaluate_deeplab(ctx: Context, checkpoint: str) -> dict:
    """mIoU of a DeepLab checkpoint on the val split, without and with CRF post-processing."""
    ids = _scored_ids(ctx, ctx.cfg.data.val_split)
    if not ids or not ctx.path(checkpoint).exists():
        return {}
    model, _ = load_deeplab(ctx.path(checkpoint))
    model.to(ctx.device)
    s = ctx.cfg.seg
    crf = crf_params(s.crf_preset, ctx.cfg.crf)
    plain, refined = SegmentationMeter(ctx.class_names), SegmentationMeter(ctx.class_names)
    for image_id in progress(ids, f"eval {checkpoint}"):
        sample = ctx.source.load(image_id)
        x = image_to_tensor(sample.image).to(ctx.device)
        probs = predict_probs(model, x, s.test_scales, s.test_flip).cpu().numpy()
        plain.update(sample.mask, probs.argmax(0))
        refined.update(sample.mask, dense_crf(sample.image, probs, crf).argmax(0))
    return {"miou": plain.summary(), "crf_miou": refined.summary(), "images": len(ids)}


def write_figures(ctx: Context) -> None:
    """CAM overlays and masks of a few seed-split images, and DeepLab outputs on val images."""
    folder = ctx.path("figures")
    folder.mkdir(exist_ok=True)
    n = ctx.cfg.eval.n_figures
    _cam_figure(ctx, ctx.ids(ctx.cfg.data.seed_split)[:n], folder / "cams.png", True)
    if ctx.path(DEEPLAB).exists():
        model, _ = load_deeplab(ctx.path(DEEPLAB))
        crf = crf_params(ctx.cfg.seg.crf_preset, ctx.cfg.crf)
        rows = []
        for image_id in ctx.ids(ctx.cfg.data.val_split)[:n]:
            sample = ctx.source.load(image_id)
            probs = predict_probs(model, image_to_tensor(sample.image)).numpy()
            gt = sample.mask if sample.mask is not None else probs.argmax(0).astype(np.uint8) * 0
            rows.append([
                sample.image,
                overlay(sample.image, colorize_mask(gt)),
                overlay(sample.image, colorize_mask(probs.argmax(0))),
                overlay(sample.image, colorize_mask(dense_crf(sample.image, probs, crf).argmax(0))),
            ])  # fmt: skip
        if rows:
            montage(rows, ["image", "ground truth", "DeepLab", "DeepLab + CRF"]).save(
                folder / "segmentation.png"
            )


def run(ctx: Context) -> dict:
    if not distributed.is_main():
        return {}
    torch.set_grad_enabled(False)
    report: dict = {
        "method": ctx.method.name,
        "dataset": ctx.cfg.data.name,
        "preset": ctx.cfg.preset,
        "supervision": "I+S" if ctx.method.uses_saliency else "I",
        "class_names": list(ctx.class_names),
    }
    report["health"] = training_health(ctx)
    if not report["health"]["healthy"]:
        log.warning("unhealthy classifier: %s", "; ".join(report["health"]["problems"]))
    report.update(evaluate_seeds_and_pseudo(ctx))
    walked = affinity.evaluate(ctx, _scored_ids(ctx, ctx.cfg.data.seed_split))
    if walked:
        report.setdefault("per_class_iou", {})["pseudo_affinity"] = walked.pop("per_class")
        report.update(walked)
    seg = evaluate_deeplab(ctx, DEEPLAB)
    if seg:
        report["seg_miou"] = seg["miou"]["miou"]
        report["seg_crf_miou"] = seg["crf_miou"]["miou"]
        report.setdefault("per_class_iou", {})["seg"] = seg["miou"]["per_class"]
        report["per_class_iou"]["seg_crf"] = seg["crf_miou"]["per_class"]
        report["val_images"] = seg["images"]
    upper = evaluate_deeplab(ctx, UPPER_BOUND)
    if upper:
        report["upper_bound_miou"] = upper["miou"]["miou"]
        report["upper_bound_crf_miou"] = upper["crf_miou"]["miou"]
        report.setdefault("per_class_iou", {})["upper_bound"] = upper["miou"]["per_class"]
    timings = ctx.path("timings.json")
    report["stage_seconds"] = json.loads(timings.read_text()) if timings.exists() else {}
    write_figures(ctx)
    report["figures"] = sorted(f"figures/{f.name}" for f in ctx.path("figures").glob("*.png"))
    atomic_write_json(report, ctx.path(OUTPUT))
    torch.set_grad_enabled(True)
    return {k: report[k] for k in ("seed_miou", "pseudo_miou", "seg_miou") if k in report}
