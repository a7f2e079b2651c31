"""The classification network whose class activation maps localise objects (Zhou et al., 2016).

A backbone, then a bias-free 1x1 convolution to C class maps. Scores are the global average of
the maps, which equals the classifier applied after global average pooling (the IRN form), so
one weight serves both training and CAM inference. Methods subclass :class:`CamNet` to add heads.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.normalize import Normalize


class CamNet(nn.Module):
    """backbone -> 1x1 conv to ``num_classes`` maps; input RGB float [B, 3, H, W] in 0..255."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone stages, shallow to deep, for an RGB batch [B, 3, H, W]."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": [B, C], "cams": raw maps [B, C, h, w], "features": deepest [B, D, h, w]}."""
        feature = self.features(x)[-1]
        cams = self.classifier(feature)
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "features": feature}

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps for inference, ReLU applied: [B, C, h, w] (Zhou et al., Eq. 1)."""
        return torch.relu(self.forward(x)["cams"])

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (learning rate x head_lr_mult); subclasses extend this."""
        return [self.classifier]
