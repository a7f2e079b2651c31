"""The plain CAM baseline (Zhou et al., CVPR 2016): GAP classifier, multi-label soft margin loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.methods.base import Method, StepInfo


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin loss; logits [B, C], labels [B, C] in {0, 1} -> scalar.

    mean over B and C of -(y log sigmoid(s) + (1 - y) log sigmoid(-s)).
    """
    return F.multilabel_soft_margin_loss(logits, labels)


@dataclass
class CamBaselineConfig:
    """The baseline has no hyperparameters of its own."""


class CamBaseline(Method):
    name = "cam"
    summary = "plain CAM baseline: GAP + multi-label soft margin loss"
    Config = CamBaselineConfig

    def losses(self, model: nn.Module, batch: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        return {"cls": classification_loss(out["logits"], batch["labels"])}
