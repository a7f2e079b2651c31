"""The one training loop: SGD with poly decay, DDP, progress bar, and epoch-level resume.

Used by the classification stage (a method's losses) and by DeepLab (cross-entropy), so no
method has a training loop of its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wsss import distributed
from wsss.config import OptimConfig
from wsss.io import atomic_save
from wsss.logs import progress
from wsss.methods.base import StepInfo

log = logging.getLogger("wsss")

LossFn = Callable[[nn.Module, dict, StepInfo], dict[str, torch.Tensor]]
# Called on rank 0 after every epoch: (1-based epoch, mean loss terms of the epoch, the model).
EpochHook = Callable[[int, dict[str, float], nn.Module], None]


class Stateful(Protocol):
    """Training state kept outside the model (a method's hand-over step), saved for a resume."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over two groups: pretrained layers at lr, new layers (``new_modules()``) at lr x mult.

    With ``legacy_psa_momentum`` the momentum equals the weight decay, as in PSA's
    ``PolyOptimizer`` (``super().__init__(params, lr, weight_decay)``), which every later WSSS
    repository copied.
    """
    new_ids = {id(p) for m in model.new_modules() for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in new_ids], "lr_mult": 1.0},
        {"params": [p for p in trainable if id(p) in new_ids], "lr_mult": cfg.head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    momentum = cfg.weight_decay if cfg.legacy_psa_momentum else cfg.momentum
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay)


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the loss terms; names starting with "_" are diagnostics, logged but not trained."""
    return sum(v for k, v in terms.items() if not k.startswith("_"))


def poly_lr(base_lr: float, step: int, max_step: int, power: float) -> float:
    """lr = base_lr * (1 - step / max_step) ** power."""
    return base_lr * (1.0 - min(step, max_step) / max_step) ** power


def train(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    optim: OptimConfig,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device,
    state_path: Path,
    seed: int = 0,
    workers: int = 0,
    desc: str = "train",
    find_unused_parameters: bool = False,
    on_epoch_end: EpochHook | None = None,
    extra_state: Stateful | None = None,
) -> dict[str, float]:
    """Trains ``model`` in place; returns the last epoch's mean loss terms.

    ``batch_size`` is the global batch: under torchrun each of N ranks takes batch_size / N.
    After every epoch model and optimiser state go to ``state_path`` (atomically), and a
    restarted run continues from the last finished epoch. max_step is the real number of
    optimiser steps (epochs x batches per epoch), so the poly schedule ends at zero.
    ``on_epoch_end`` runs on rank 0 after each epoch, before its state is saved.
    ``extra_state`` (the method's own state, e.g. when its losses started) is saved and
    restored with them, so a resumed run continues the schedules that count from it.
    """
    torch.manual_seed(seed)
    world = distributed.world_size()
    per_rank = max(1, batch_size // world)
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed) if world > 1 else None
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(dataset) >= per_rank * world * 2,
        persistent_workers=workers > 0,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{desc}: no training images")
    max_step = epochs * steps_per_epoch
    model.to(device)
    optimizer = build_optimizer(model, optim)
    start_epoch = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        if extra_state is not None and "extra" in state:
            extra_state.load_state_dict(state["extra"])
        log.info("%s: resuming after epoch %d from %s", desc, start_epoch, state_path)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)
    means: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        bar = progress(loader, f"{desc} {epoch + 1}/{epochs}", leave=False)
        for i, batch in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for g in optimizer.param_groups:
                g["lr"] = poly_lr(optim.lr, step, max_step, optim.poly_power) * g["lr_mult"]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            terms = loss_fn(net, batch, StepInfo(epoch, step, max_step))
            loss = total_loss(terms)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        means = {k: v / steps_per_epoch for k, v in sums.items()}
        log.info(
            "%s epoch %d/%d: %s",
            desc,
            epoch + 1,
            epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
        )
        if distributed.is_main():
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, means, model)
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "extra": extra_state.state_dict() if extra_state is not None else {},
                },
                state_path,
            )
        distributed.barrier()
        if not all(math.isfinite(v) for v in means.values()):
            raise FloatingPointError(f"{desc}: non-finite loss in epoch {epoch + 1}")
    return means
