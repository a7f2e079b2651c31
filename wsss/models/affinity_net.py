"""AffinityNet (Ahn and Kwak, CVPR 2018): a backbone and a small head that embeds each cell of
the feature grid so that the L1 distance between two embeddings predicts whether the two pixels
belong to the same class (psa ``network/resnet38_aff.py``).

The last ``len(dims)`` backbone stages each go through a bias-free 1x1 convolution and ELU
(psa: conv4 -> 64, conv5 -> 128, conv6 -> 256), are concatenated and pass a last 1x1
convolution + ELU (448 -> 448). Stages with another resolution than the deepest are resized to
it (ResNet-50/101 at OS16; ResNet-38 and MobileNetV2 stages already share it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.normalize import Normalize


class AffinityNet(nn.Module):
    """RGB float [B, 3, H, W] in 0..255 -> affinity embedding [B, out_dim, H / s, W / s]."""

    def __init__(
        self,
        backbone: nn.Module,
        normalize: Normalize,
        dims: tuple[int, ...] = (64, 128, 256),
        out_dim: int = 448,
    ):
        super().__init__()
        if len(dims) > len(backbone.channels):
            raise ValueError(f"{len(dims)} feature levels asked, backbone has {backbone.channels}")
        self.normalize = normalize
        self.backbone = backbone
        self.levels = len(dims)
        in_channels = backbone.channels[-self.levels :]
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, d, 1, bias=False) for c, d in zip(in_channels, dims, strict=True)
        )
        self.project = nn.Conv2d(sum(dims), out_dim, 1, bias=False)
        for conv in self.reduce:  # psa: kaiming_normal_ for f8_3..f8_5, xavier gain 4 for f9
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.project.weight, gain=4)

    @property
    def stride(self) -> int:
        """Stride of the embedding grid with respect to the input."""
        return self.backbone.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(self.normalize(x))[-self.levels :]
        size = feats[-1].shape[-2:]
        reduced = [
            F.elu(conv(f if f.shape[-2:] == size else F.interpolate(f, size, mode="bilinear")))
            for conv, f in zip(self.reduce, feats, strict=True)
        ]
        return F.elu(self.project(torch.cat(reduced, 1)))

    def new_modules(self) -> list[nn.Module]:
        """The head, trained at head_lr_mult (psa ``from_scratch_layers``)."""
        return [self.reduce, self.project]
