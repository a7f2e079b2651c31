"""DeepLab v2 (Chen et al., 2017): a dilated backbone and an ASPP of parallel atrous 3x3 convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.normalize import Normalize


class ASPP(nn.Module):
    """Sum of atrous 3x3 convolutions, one per rate, each straight to class logits (v2 form)."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(nn.Module):
    """RGB float [B, 3, H, W] in 0..255 -> logits [B, K, H/os, W/os] over K = C + 1 classes."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        rates: tuple[int, ...] = (6, 12, 18, 24),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_classes, tuple(rates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(self.normalize(x))[-1])

    def new_modules(self) -> list[nn.Module]:
        return [self.aspp]


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = True,
) -> torch.Tensor:
    """Multi-scale (+ flip) segmentation: RGB float [3, H, W] -> probabilities [K, H, W].

    Softmax of each pass, upsampled bilinearly to the input size, averaged over passes.
    """
    _, h, w = image.shape
    batch = image[None]
    if flip:
        batch = torch.cat([batch, batch.flip(-1)])
    total = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = batch if s == 1.0 else F.interpolate(batch, size, mode="bilinear", align_corners=False)
        logits = F.interpolate(model(x), (h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        if flip:
            probs = probs[:1] + probs[1:].flip(-1)
        total = probs[0] if total is None else total + probs[0]
    return total / (len(scales) * (2 if flip else 1))
