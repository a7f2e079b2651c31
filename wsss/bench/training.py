"""Training section: images per second of each method's classification step.

One SGD step = the method's losses on a batch of the ``default`` preset (crop, batch size,
backbone), backward and the optimizer update, exactly as :mod:`wsss.trainer` runs it. The
steps are timed at the end of the schedule (``StepInfo`` past every warm-up), so methods whose
extra losses switch on late (KTSE's SSR and MGA) are measured with them on. Runs on CUDA when
available, on the CPU otherwise; the device is recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from wsss.bench.common import Say, fmt, markdown_table
from wsss.bench.quality import METHODS

WARMUP_STEPS = 2
TIMED_STEPS = 5


def _batch(ctx, saliency: bool, device) -> dict:
    """One batch of the classification loader: images 0..255 [B, 3, S, S], labels [B, C]."""
    from torch.utils.data import DataLoader

    from wsss.data.loaders import ClassificationDataset

    c = ctx.cfg.cls
    ids = ctx.ids(ctx.cfg.data.train_split)[: c.batch_size]
    dataset = ClassificationDataset(
        ctx.source,
        ids,
        crop=c.crop,
        resize_long=c.resize_long,
        color_jitter=c.color_jitter,
        hue_jitter=c.hue_jitter,
        with_saliency=saliency,
    )
    batch = next(iter(DataLoader(dataset, batch_size=len(ids))))
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def time_method(name: str, preset: str, say: Say) -> dict:
    """Seconds per classification step of ``name`` and the images per second it makes."""
    import torch

    from wsss.checkpoint import make_backbone
    from wsss.config import PRESETS, RunConfig
    from wsss.methods import StepInfo, get_method
    from wsss.pipeline import make_context
    from wsss.trainer import build_optimizer, total_loss

    method_cls = get_method(name)
    cfg = RunConfig(method_name=name, preset=preset)
    cfg.method = method_cls.Config()
    PRESETS[preset](cfg)
    method_cls(cfg.method).apply_preset(preset, cfg)
    ctx = make_context(cfg, Path("."))
    method = ctx.method
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_classes = len(ctx.class_names) - 1
    model = method.build_model(make_backbone(cfg.cls.backbone), n_classes).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg.cls.optim)
    batch = _batch(ctx, method.uses_saliency, device)
    steps = cfg.cls.epochs * 1000
    seconds = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        terms = method.losses(model, batch, StepInfo(cfg.cls.epochs - 1, steps - 1, steps))
        optimizer.zero_grad(set_to_none=True)
        total_loss(terms).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    step_s = float(np.median(seconds))
    batch_size = batch["image"].shape[0]
    row = {
        "device": str(device),
        "backbone": cfg.cls.backbone.name,
        "batch": batch_size,
        "crop": cfg.cls.crop,
        "step_seconds_median": round(step_s, 4),
        "images_per_second": round(batch_size / step_s, 2),
        "loss_terms": sorted(terms),
    }
    say(f"training: {name}: {row['images_per_second']} images/s ({row['device']})")
    return row


def section(
    out_dir: Path, say: Say, methods: tuple[str, ...] = METHODS, preset: str = "default"
) -> dict:
    """Images per second of every method's classification step."""
    import torch

    torch.manual_seed(0)
    return {
        "preset": preset,
        "threads": torch.get_num_threads(),
        "methods": {m: time_method(m, preset, say) for m in methods},
    }


def markdown(results: dict) -> str:
    reports = results["methods"]
    base = reports.get("cam", {}).get("images_per_second")
    rows = [
        [
            name,
            r["device"],
            r["backbone"],
            f"{r['batch']} x {r['crop']} px",
            fmt(r["step_seconds_median"] * 1000, 0),
            fmt(r["images_per_second"]),
            fmt(base / r["images_per_second"], 2) if base else "–",
        ]
        for name, r in reports.items()
    ]
    header = ["method", "device", "backbone", "batch", "ms / step", "images / s", "cost vs cam"]
    return markdown_table(header, rows)
