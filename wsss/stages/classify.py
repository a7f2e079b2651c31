"""Stage cls: train the method's classification network -> ``classifier.pt``.

After every epoch the network's health is logged and kept in ``training.json``: the epoch's
mean loss terms, the label-prior loss, and CAM health on a few training images
(:mod:`wsss.health`); a classifier at the label prior or with non-positive CAMs is warned about
while it trains, not discovered at the end of the run.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from wsss import distributed, health
from wsss.checkpoint import make_backbone, save_checkpoint
from wsss.data.loaders import ClassificationDataset, image_to_tensor
from wsss.io import atomic_write_json
from wsss.stages.context import Context
from wsss.trainer import train

OUTPUT = "classifier.pt"
HISTORY = "training.json"
# The loss term compared with the label prior: "_cls" where a method reports it (its "cls"
# mixes several branches), else "cls" (wsss.methods.base.Method.losses).
CLS_TERMS = ("_cls", "cls")
# Images read to estimate the class frequencies behind ``cls.score_bias``.
FREQUENCY_SAMPLE = 512


def classification_term(losses: dict[str, float]) -> float | None:
    return next((losses[k] for k in CLS_TERMS if k in losses), None)


class HealthLog:
    """Epoch hook: label frequencies seen in training, CAM probe, warnings, ``training.json``."""

    def __init__(self, ctx: Context, fresh: bool):
        self.ctx, self.path = ctx, ctx.path(HISTORY)
        old = json.loads(self.path.read_text()) if self.path.exists() and not fresh else {}
        self.history: list[dict] = old.get("epochs", [])
        self.prior: float | None = old.get("label_prior_loss")
        self.label_sum: np.ndarray | None = None
        self.label_count = 0
        ids = ctx.ids(ctx.cfg.data.train_split)[: health.PROBE_IMAGES]
        samples = [ctx.source.load(i) for i in ids]
        self.images = [image_to_tensor(s.image).to(ctx.device) for s in samples]
        self.labels = [s.labels for s in samples]

    def wrap(self, loss_fn):
        """The method's loss, counting the labels of every batch (for the label prior)."""

        def counted(net, batch: dict, info):
            labels = batch["labels"].detach().double().sum(0).cpu().numpy()
            self.label_sum = labels if self.label_sum is None else self.label_sum + labels
            self.label_count += len(batch["labels"])
            return loss_fn(net, batch, info)

        return counted

    def __call__(self, epoch: int, means: dict[str, float], model) -> None:
        if self.prior is None and self.label_count:
            self.prior = health.prior_from_frequencies(self.label_sum / self.label_count)
        cams = health.probe_cam_health(model, self.images, self.labels)
        cls_loss = classification_term(means)
        found = health.warn_if_unhealthy(
            f"cls[{self.ctx.method.name}]", epoch, cls_loss, self.prior, cams
        )
        self.history = [h for h in self.history if h["epoch"] < epoch]
        self.history.append(
            {"epoch": epoch, "losses": {k: round(v, 5) for k, v in means.items()}, **cams,
             "problems": found}
        )  # fmt: skip
        atomic_write_json({"label_prior_loss": self.prior, "epochs": self.history}, self.path)


def load_history(ctx: Context) -> dict:
    """``training.json`` of the run ({} when the classifier was trained elsewhere)."""
    path = ctx.path(HISTORY)
    return json.loads(path.read_text()) if path.exists() else {}


def label_frequencies(ctx: Context, limit: int = FREQUENCY_SAMPLE) -> torch.Tensor:
    """Fraction of training images that hold each class [C], from up to ``limit`` images
    spread evenly over the training split."""
    ids = ctx.ids(ctx.cfg.data.train_split)
    sample = ids[:: max(1, len(ids) // limit)]
    labels = np.stack([ctx.source.load(i).labels for i in sample]).astype(np.float64)
    return torch.from_numpy(labels.mean(axis=0))


def run(ctx: Context) -> dict:
    cfg = ctx.cfg.cls
    torch.manual_seed(cfg.seed)  # the new layers' initialisation belongs to the run's seed
    model = ctx.method.build_model(make_backbone(cfg.backbone), len(ctx.class_names) - 1)
    if cfg.score_bias:
        model.enable_score_bias(label_frequencies(ctx))
    dataset = ClassificationDataset(
        ctx.source,
        ctx.ids(ctx.cfg.data.train_split),
        crop=cfg.crop,
        resize_long=cfg.resize_long,
        color_jitter=cfg.color_jitter,
        with_saliency=ctx.method.uses_saliency,
        hue_jitter=cfg.hue_jitter,
        saliency_resize=cfg.saliency_resize,
    )
    state = ctx.path(".cls.state.pt")
    monitor = HealthLog(ctx, fresh=not state.exists()) if distributed.is_main() else None
    losses = train(
        model,
        dataset,
        monitor.wrap(ctx.method.losses) if monitor else ctx.method.losses,
        cfg.optim,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        device=ctx.device,
        state_path=state,
        seed=cfg.seed,
        workers=ctx.cfg.data.workers,
        desc=f"cls[{ctx.method.name}]",
        find_unused_parameters=ctx.method.ddp_find_unused_parameters,
        on_epoch_end=monitor,
        extra_state=ctx.method,
    )
    if distributed.is_main():
        save_checkpoint(ctx.path(OUTPUT), model.cpu(), "classifier", ctx.cfg, ctx.class_names)
        state.unlink(missing_ok=True)
    return {"final_losses": losses, "images": len(dataset)}
