"""CAM refiners by feature affinity: SEAM's Pixel Correlation Module and CPN's PRCM.

PCM (Wang et al., CVPR 2020; CPN Eq. 9-10) propagates a CAM along the cosine affinity of a
learned pixel embedding. PRCM (Zhang et al., ICCV 2021, Eq. 11-12) weights a CAM by the
softmax-over-pixels relation between every pixel and every class region (OCR-style).

Both take a detached, normalised CAM (:func:`seam_normalize_cam`) and aggregated features
X = [image, ReLU(1x1(mid)), ReLU(1x1(deep))] whose backbone parts are detached
(:class:`CorrelationFeatures`). A loss on their output therefore trains only their own 1x1
convolutions, never the backbone or the classifier: the "gradient blocking" of SEAM and CPN.

    xf = features(image_normalised, feats[-3], feats[-2], size=cam.shape[-2:])  # [B, 195, h, w]
    y = seam_normalize_cam(raw_fg_cams)  # [B, 1 + C, h, w]
    emb = pcm.embed(xf)
    refined = propagate(y, cosine_affinity(emb)) + prcm(y, xf, emb)  # CPN: Y_pcm + Y_prcm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-5  # SEAM/CPN's epsilon in every normalisation below


def seam_normalize_cam(cams: Tensor, eps: float = EPS) -> Tensor:
    """The detached PCM/PRCM input (SEAM ``cam_d_norm``): raw fg [B, C, h, w] -> [B, 1+C, h, w].

    fg_c = ReLU(ReLU(cam_c) - eps) / (max_hw ReLU(cam_c) + eps); channel 0 (background) =
    1 - max_c fg_c (CPN Eq. 16 with alpha = 1); then every fg value below its pixel's fg maximum
    is set to 0 (only the arg-max class survives). Computed without gradient; no label masking
    (the forward pass has no labels).
    """
    with torch.no_grad():
        cam = F.relu(cams.detach())
        top = cam.flatten(2).amax(-1)[..., None, None] + eps
        fg = F.relu(cam - eps) / top
        best = fg.amax(1, keepdim=True)
        fg = torch.where(fg < best, torch.zeros_like(fg), fg)
        return torch.cat([1.0 - best, fg], 1)


class CorrelationFeatures(nn.Module):
    """X of SEAM/CPN: cat[resize(image), ReLU(1x1(mid.detach())), ReLU(1x1(deep.detach()))].

    mid/deep are the backbone's third- and second-to-last stages (ResNet-38: conv4 512 ch and
    conv5 1024 ch; the paper's "stage 3 and 4"); ``reduced`` their channels after the 1x1
    convolutions (64, 128). Everything is resized bilinearly (align_corners=True) to ``size``.
    """

    def __init__(self, mid_channels: int, deep_channels: int, reduced: tuple[int, int] = (64, 128)):
        super().__init__()
        self.reduce_mid = nn.Conv2d(mid_channels, reduced[0], 1, bias=False)  # SEAM f8_3
        self.reduce_deep = nn.Conv2d(deep_channels, reduced[1], 1, bias=False)  # SEAM f8_4
        nn.init.kaiming_normal_(self.reduce_mid.weight)
        nn.init.kaiming_normal_(self.reduce_deep.weight)
        self.out_channels = 3 + reduced[0] + reduced[1]

    def forward(self, image: Tensor, mid: Tensor, deep: Tensor, size: tuple[int, int]) -> Tensor:
        """image [B, 3, H, W] normalised, mid [B, Cm, ., .], deep [B, Cd, ., .] -> [B, C1, size]."""

        def resized(t: Tensor) -> Tensor:
            if tuple(t.shape[-2:]) == tuple(size):
                return t
            return F.interpolate(t, size, mode="bilinear", align_corners=True)

        mid = F.relu(self.reduce_mid(resized(mid.detach())))
        deep = F.relu(self.reduce_deep(resized(deep.detach())))
        return torch.cat([resized(image.detach()), mid, deep], 1)


def cosine_affinity(embedding: Tensor, eps: float = EPS) -> Tensor:
    """J = ReLU(g^T g) of L2-normalised pixel embeddings (Eq. 10): [B, D, h, w] -> [B, hw, hw]."""
    f = embedding.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    return F.relu(f.transpose(1, 2) @ f)


def propagate(cam: Tensor, affinity: Tensor, eps: float = EPS) -> Tensor:
    """Y_pcm[:, j] = sum_i Y[:, i] J_ij / (sum_i J_ij + eps) (Eq. 9, SEAM's column form).

    cam [B, K, h, w], affinity [B, hw, hw] -> [B, K, h, w]. Each target pixel j is a convex
    combination of the CAM at the pixels similar to it, channel by channel.
    """
    b, k, h, w = cam.shape
    weights = affinity / (affinity.sum(1, keepdim=True) + eps)
    return (cam.reshape(b, k, h * w) @ weights).reshape(b, k, h, w)


class PCM(nn.Module):
    """Pixel Correlation Module: the embedding g (1x1, no bias, Xavier gain 4) and Eq. 9-10."""

    def __init__(self, in_channels: int, embed_channels: int = 192):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, embed_channels, 1, bias=False)  # SEAM/CPN f9
        nn.init.xavier_uniform_(self.embed.weight, gain=4)

    def forward(self, cam: Tensor, x: Tensor) -> Tensor:
        """cam [B, K, h, w] (detached, normalised), X [B, C1, h, w] -> refined [B, K, h, w]."""
        return propagate(cam, cosine_affinity(self.embed(x)))


class PRCM(nn.Module):
    """Pixel-Region Correlation Module (CPN Eq. 11-12).

    Z = SoftMax_hw(Y) X^T            [B, K, C1]  class-region descriptors (OCR spatial gather)
    P_R = phi(Z) ReLU(g(X)) / sqrt(K) [B, K, hw] pixel-region relation (Eq. 11)
    Y_prcm = Y * SoftMax_hw(P_R)      [B, K, h, w] (Eq. 12)

    phi is a 1x1 conv C1 -> D applied to each class descriptor (Xavier gain 4), g the PCM
    embedding (shared, passed in as g(X)). ``legacy_view`` reproduces the authors' code, which
    lays phi(Z) out as [B, D, K, 1] and reshapes it to [B, K, D] with ``.view`` instead of
    transposing, so the rows of the key mix classes and channels; the default transposes.
    """

    def __init__(self, in_channels: int, embed_channels: int = 192, legacy_view: bool = False):
        super().__init__()
        self.phi = nn.Conv2d(in_channels, embed_channels, 1, bias=False)  # CPN f10
        nn.init.xavier_uniform_(self.phi.weight, gain=4)
        self.legacy_view = legacy_view

    def region_descriptors(self, cam: Tensor, x: Tensor) -> Tensor:
        """Z = SoftMax_hw(Y) X^T: cam [B, K, h, w], X [B, C1, h, w] -> [B, K, C1]."""
        return F.softmax(cam.flatten(2), dim=-1) @ x.flatten(2).transpose(1, 2)

    def keys(self, z: Tensor) -> Tensor:
        """ReLU(phi(Z)) per class: [B, K, C1] -> [B, K, D]."""
        b, k, _ = z.shape
        key = F.relu(self.phi(z.transpose(1, 2).unsqueeze(3)))  # [B, D, K, 1]
        if self.legacy_view:
            return key.reshape(b, k, -1)  # the reference code's .view: mixes class and channel
        return key.squeeze(3).transpose(1, 2)

    def forward(self, cam: Tensor, x: Tensor, gx: Tensor) -> Tensor:
        """cam [B, K, h, w] (detached, normalised), X [B, C1, h, w], g(X) [B, D, h, w] -> Y_prcm.

        Y_prcm has the shape of cam.
        """
        k = cam.shape[1]
        relation = self.keys(self.region_descriptors(cam, x)) @ F.relu(gx).flatten(2)
        relation = relation * k**-0.5
        return cam * F.softmax(relation, dim=-1).reshape(cam.shape)
