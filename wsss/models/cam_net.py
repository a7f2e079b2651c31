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


class ScoreBias(nn.Module):
    """A per-class bias added to the pooled scores [B, C], never to the maps.

    Zhou et al.'s CAM reads the maps before the fc bias; PSA/IRN drop the bias altogether, so a
    class that is absent from most images can only get its negative score by pushing its map
    below zero everywhere. Initialised to the log-odds of the class frequencies (the label
    prior), the bias carries that offset and the maps only have to rise on the objects.
    """

    def __init__(self, frequencies: torch.Tensor):
        super().__init__()
        p = frequencies.double().clamp(1e-3, 1 - 1e-3)
        self.bias = nn.Parameter((p / (1 - p)).log().float())

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias


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
        self.score_bias: ScoreBias | None = None

    def enable_score_bias(self, frequencies: torch.Tensor) -> None:
        """Adds a :class:`ScoreBias` over the C scores: log-odds of ``frequencies`` [C]."""
        self.score_bias = ScoreBias(frequencies)

    def biased(self, scores: torch.Tensor) -> torch.Tensor:
        """Pooled scores [B, C] plus the score bias where the network has one."""
        return scores if self.score_bias is None else self.score_bias(scores)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone stages, shallow to deep, for an RGB batch [B, 3, H, W]."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": [B, C], "cams": raw maps [B, C, h, w], "features": deepest [B, D, h, w]}."""
        feature = self.features(x)[-1]
        cams = self.classifier(feature)
        return {"logits": self.biased(cams.mean(dim=(2, 3))), "cams": cams, "features": feature}

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps for inference, ReLU applied: [B, C, h, w] (Zhou et al., Eq. 1)."""
        return torch.relu(self.forward(x)["cams"])

    def head_modules(self) -> list[nn.Module]:
        """The method's layers trained from scratch; subclasses with other heads override this."""
        return [self.classifier]

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (learning rate x head_lr_mult): the heads and the score
        bias, if any."""
        bias = [] if self.score_bias is None else [self.score_bias]
        return [*self.head_modules(), *bias]
