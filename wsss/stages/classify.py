"""Stage cls: train the method's classification network -> ``classifier.pt``."""

from __future__ import annotations

import torch

from wsss import distributed
from wsss.checkpoint import make_backbone, save_checkpoint
from wsss.data.loaders import ClassificationDataset
from wsss.stages.context import Context
from wsss.trainer import train

OUTPUT = "classifier.pt"


def run(ctx: Context) -> dict:
    cfg = ctx.cfg.cls
    torch.manual_seed(cfg.seed)  # the new layers' initialisation belongs to the run's seed
    model = ctx.method.build_model(make_backbone(cfg.backbone), len(ctx.class_names) - 1)
    dataset = ClassificationDataset(
        ctx.source,
        ctx.ids(ctx.cfg.data.train_split),
        crop=cfg.crop,
        resize_long=cfg.resize_long,
        color_jitter=cfg.color_jitter,
        with_saliency=ctx.method.uses_saliency,
    )
    state = ctx.path(".cls.state.pt")
    losses = train(
        model,
        dataset,
        ctx.method.losses,
        cfg.optim,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        device=ctx.device,
        state_path=state,
        seed=cfg.seed,
        workers=ctx.cfg.data.workers,
        desc=f"cls[{ctx.method.name}]",
        find_unused_parameters=ctx.method.ddp_find_unused_parameters,
    )
    if distributed.is_main():
        save_checkpoint(ctx.path(OUTPUT), model.cpu(), "classifier", ctx.cfg, ctx.class_names)
        state.unlink(missing_ok=True)
    return {"final_losses": losses, "images": len(dataset)}
