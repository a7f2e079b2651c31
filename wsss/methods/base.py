"""What a WSSS method is to the rest of the code: a network, a config and a training loss.

The shared pipeline (data, CAM inference, refinement, DeepLab, evaluation) knows nothing about
any single method. A method module defines a :class:`Method` subclass with its own ``Config``
dataclass (every constant of its paper as a field), builds its classification network (a
:class:`wsss.models.cam_net.CamNet` or subclass, whose ``cam()`` gives the foreground CAMs) and
computes its losses for one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from wsss.models.cam_net import CamNet

if TYPE_CHECKING:
    from wsss.methods.handover import HandOverGate


@dataclass
class StepInfo:
    """Where training is: epoch and step counters (for warm-ups and schedules)."""

    epoch: int
    step: int
    max_step: int


class Method:
    """Base class; subclasses set ``name``, ``Config`` and override ``losses``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    uses_saliency: ClassVar[bool] = False  # needs per-image saliency maps ("I+S" results)
    # Some losses leave heads unused in a step (DDP must then search the graph for them).
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config
        # KTSE's and CPN's hand-over (wsss.methods.handover): training state outside the network.
        self.gate: HandOverGate | None = None

    def state_dict(self) -> dict:
        """The method's own training state, saved with the epoch checkpoint for a resume."""
        return {"gate": self.gate.state_dict()} if self.gate is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.gate is not None and "gate" in state:
            self.gate.load_state_dict(state["gate"])

    def build_model(self, backbone: nn.Module, num_classes: int) -> CamNet:
        """The classification network over ``num_classes`` foreground classes."""
        return CamNet(backbone, num_classes)

    def losses(self, model: nn.Module, batch: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch; their sum is minimised.

        Names starting with "_" are diagnostics (detached), logged but not trained. "cls" (or
        the diagnostic "_cls" where "cls" mixes several branches) is the multi-label soft
        margin loss of the batch's own images, which the health checks compare with the label
        prior (:mod:`wsss.health`).

        batch: "image" float [B, 3, H, W] in 0..255, "labels" float [B, C] multi-hot,
        "saliency" float [B, 1, H, W] in [0, 1] when ``uses_saliency``.
        """
        raise NotImplementedError

    def apply_preset(self, preset: str, run_config) -> None:
        """Edits the run config for a preset (the ``paper`` recipe of this method's paper)."""
