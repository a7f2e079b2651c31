"""The hand-over gate: auxiliary losses start once the classifier's CAMs carry class evidence.

A short run starts its auxiliary losses (KTSE's SSR/SIE/MGA, CPN's L_tcp/L_cpcr) on maps that
are still negative for the present classes (the first steps of training push them below zero),
where those losses have trivial minimisers: an all-background pseudo label (KTSE), or a zero
target that a map without class evidence matches (CPN). The gate opens, and stays open, at the
first step whose batch has every present class's CAM maximum positive on at least ``threshold``
of its images (mean over ranks); ``threshold`` 0 opens it at once. Beyond the authors, whose
runs reach this state within their long classification-only or 21k-step schedules.
"""

from __future__ import annotations

import torch

from wsss import distributed
from wsss.methods.base import StepInfo


def in_warmup(info: StepInfo, fraction: float) -> bool:
    """True while ``info.step`` lies in the first ``fraction`` of the optimiser steps."""
    return info.step < fraction * info.max_step


def present_positive_fraction(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of images whose every present class has a positive CAM maximum.

    cams [B, C, h, w] raw foreground CAM features; labels [B, C] -> scalar tensor in [0, 1].
    """
    top = cams.amax(dim=(2, 3))
    present = labels > 0.5
    healthy = ((top > 0) | ~present).all(dim=1) & present.any(dim=1)
    return healthy.float().sum() / present.any(dim=1).float().sum().clamp(min=1)


class HandOverGate:
    """Latches open at the first step whose CAMs pass; ``opened_at`` is that step (or None)."""

    def __init__(self) -> None:
        self.opened_at: int | None = None

    def is_open(
        self, info: StepInfo, cams: torch.Tensor, labels: torch.Tensor, threshold: float
    ) -> bool:
        """cams [B, C, h, w] raw foreground CAMs of the batch, labels [B, C]."""
        if self.opened_at is None:
            if threshold > 0:
                positive = distributed.all_reduce_mean(
                    present_positive_fraction(cams.detach(), labels)
                )
                if float(positive) < threshold:
                    return False
            self.opened_at = info.step
        return True

    def state_dict(self) -> dict:
        """What a resumed run needs to continue where it stopped (ramps count from it)."""
        return {"opened_at": self.opened_at}

    def load_state_dict(self, state: dict) -> None:
        self.opened_at = state["opened_at"]
