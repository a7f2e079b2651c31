"""Export wrappers: the serving contract of each network, around the untouched training modules.

Both wrappers take an RGB batch ``IMAGES`` float32 [B, 3, H, W] with values 0..255; the input
normalisation (mean/std) is already the networks' first layer (:mod:`wsss.models.normalize`),
so every caller sends plain RGB. Every output is at the input resolution.

``CamExport``  IMAGES -> SCORES [B, C] (class logits, before the sigmoid) and CAMS [B, C, H, W]
               (per-class max-normalised CAMs in [0, 1]).
``SegExport``  IMAGES -> PROBS [B, C + 1, H, W] (softmax over background + C classes).
``CamSegExport`` IMAGES -> PROBS [B, C + 1, H, W] from a CAM network alone (no DeepLab): the
               CAMs of the classes present, beside a constant background score.

The exported CAM is **single-scale** (one pass at the input size, no flip): the multi-scale +
flip fusion of :func:`wsss.cam.multiscale_cam` is a training-time tool for pseudo labels, four
to eight times the cost of one pass, and a caller who wants it can send resized/flipped copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.cam import normalize_cams
from wsss.models.cam_net import CamNet

INPUT_NAME = "IMAGES"
CAM_OUTPUTS = ("SCORES", "CAMS")
SEG_OUTPUTS = ("PROBS",)
# Epsilon of the per-class max normalisation, as wsss.cam.normalize_cams (IRN, PSA).
CAM_EPS = 1e-5


def normalize_cams_batched(cams: torch.Tensor, eps: float = CAM_EPS) -> torch.Tensor:
    """``normalize_cams(mode="max")`` per image and class: [B, C, H, W] -> [B, C, H, W].

    cam / (max over H, W + eps); the per-image function is reused so that training and serving
    cannot drift apart.
    """
    return normalize_cams(cams.flatten(0, 1), mode="max", eps=eps).view_as(cams)


class CamExport(nn.Module):
    """Classification network -> (SCORES [B, C], CAMS [B, C, H, W]) for RGB [B, 3, H, W] 0..255.

    SCORES is ``model(x)["logits"]``. CAMS is ``model.cam(x)`` (ReLU'd maps [B, C, h, w] at the
    backbone's stride), upsampled bilinearly (align_corners=False, as in training) to H, W and
    max-normalised per image and class. A network that keeps :meth:`CamNet.cam` as is gets its
    CAMs from the same forward pass (one backbone run); a method that overrides ``cam`` (refined
    maps, C + 1 heads) is called twice, exactly as its own code defines the two outputs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.shared_pass = type(model).cam is CamNet.cam
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        cams = torch.relu(out["cams"]) if self.shared_pass else self.model.cam(images)
        cams = F.interpolate(cams, images.shape[-2:], mode="bilinear", align_corners=False)
        return out["logits"], normalize_cams_batched(cams)


class SegExport(nn.Module):
    """DeepLab -> PROBS [B, C + 1, H, W]: softmax of the logits upsampled bilinearly to H, W.

    The same single-scale pass as :func:`wsss.models.deeplab.predict_probs` with
    ``scales=(1.0,), flip=False``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        logits = F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(1)


class CamSegExport(nn.Module):
    """CAM network -> PROBS [B, C + 1, H, W]: a segmentation read straight off the CAMs.

    A class is present where its score's sigmoid exceeds ``score_threshold``; the maps are
    :class:`CamExport`'s (ReLU, bilinear to H, W, max-normalised). Channel 0 is the constant
    ``bg_threshold`` (IRN's background score), channel c the map of class c if present, else 0;
    the stack is divided by its sum over channels. Its argmax is IRN's thresholded CAM label map
    (background where no present map exceeds ``bg_threshold``); the dense CRF downstream reads
    -log of it as its unary.
    """

    def __init__(self, model: nn.Module, score_threshold: float, bg_threshold: float):
        super().__init__()
        if not 0 < bg_threshold < 1 or not 0 < score_threshold < 1:
            raise ValueError("score_threshold and bg_threshold must lie in (0, 1)")
        self.cam = CamExport(model)
        self.score_threshold = score_threshold
        self.bg_threshold = bg_threshold
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores, cams = self.cam(images)
        present = (scores.sigmoid() > self.score_threshold).to(cams.dtype)
        foreground = cams * present[:, :, None, None]
        background = torch.full_like(foreground[:, :1], self.bg_threshold)
        stack = torch.cat([background, foreground], dim=1)
        return stack / stack.sum(dim=1, keepdim=True)
