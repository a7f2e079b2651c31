"""Pixel-adaptive refinement (PAR) of class maps by local colour affinity (AFA, CVPR 2022).

A re-implementation of rulixiang/afa ``wetr/PAR.py`` as batched tensor code. Each pixel i looks
at 8 neighbours j at each dilation d (the 3x3 ring scaled by d; replicate padding at borders), so
48 neighbours for the default dilations (1, 2, 4, 8, 12, 24). The affinity is

    aff_rgb(i, j) = -mean_rgb( |I_i - I_j| / (std_j(I_neighbours) + 1e-8) / w1 )^2
    aff_pos(i, j) = -( d_ij / (std_j(d) + 1e-8) / w1 )^2      (d_ij = d, or sqrt(2) d diagonally)
    aff(i, j)     = softmax_j(aff_rgb) + w2 * softmax_j(aff_pos)

and the maps are propagated ``num_iter`` times: M_i <- sum_j aff(i, j) M_j. The std is the unbiased
one over the neighbours (``torch.std`` as in AFA). The weights sum to 1 + w2 per pixel, so, as in
AFA, a constant map stays constant but grows by (1 + w2) per iteration; callers take an argmax, so
the uniform factor does not matter.

Only neighbour offsets are looped over (48 shifted views), never pixels; the neighbourhood is not
materialised for the maps, so memory stays at a few copies of the maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The 3x3 ring in AFA's kernel order: (dy, dx) of neighbours 0..7 (diagonals 0, 2, 5, 7).
RING: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1),
)  # fmt: skip


@dataclass(frozen=True)
class PARParams:
    """AFA ``PAR(dilations=[1, 2, 4, 8, 12, 24], num_iter=10)`` with its fixed w1, w2."""

    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    num_iter: int = 10
    w1: float = 0.3  # temperature of the colour and position terms
    w2: float = 0.01  # weight of the position term


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int, float]]:
    """(dy, dx, distance) of every neighbour, dilation-major, ring order inside (AFA order)."""
    return [(dy * d, dx * d, d * math.hypot(dy, dx)) for d in dilations for dy, dx in RING]


def _shifted(padded: torch.Tensor, dy: int, dx: int, pad: int, h: int, w: int) -> torch.Tensor:
    """The view of a replicate-padded [B, K, h + 2 pad, w + 2 pad] map at offset (dy, dx)."""
    return padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """x [B, K, H, W] -> its neighbours [B, K, N, H, W], N = 8 len(dilations) (replicate pad)."""
    h, w = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    views = [_shifted(padded, dy, dx, pad, h, w) for dy, dx, _ in neighbour_offsets(dilations)]
    return torch.stack(views, dim=2)


def par_affinity(image: torch.Tensor, params: PARParams = PARParams()) -> torch.Tensor:
    """Neighbour weights of every pixel: image [B, 3, H, W] -> aff [B, N, H, W].

    Each pixel's weights sum to 1 + w2 (a softmax over colour plus w2 times one over position).
    The image's scale does not matter (differences are divided by their local std).
    """
    near = neighbours(image, params.dilations)  # [B, 3, N, H, W]
    std = near.std(dim=2, keepdim=True)
    rgb = -((near - image.unsqueeze(2)).abs() / (std + 1e-8) / params.w1).pow(2)
    rgb = rgb.mean(dim=1)  # [B, N, H, W]
    dist = torch.tensor(
        [d for _, _, d in neighbour_offsets(params.dilations)],
        dtype=image.dtype,
        device=image.device,
    )
    pos = -(dist / (dist.std() + 1e-8) / params.w1).pow(2)  # [N]
    return rgb.softmax(dim=1) + params.w2 * pos.softmax(dim=0).view(1, -1, 1, 1)


def propagate(masks: torch.Tensor, aff: torch.Tensor, params: PARParams) -> torch.Tensor:
    """``num_iter`` steps of M_i <- sum_j aff(i, j) M_j; masks [B, K, H, W], aff [B, N, H, W]."""
    h, w = masks.shape[-2:]
    pad = max(params.dilations)
    offsets = neighbour_offsets(params.dilations)
    for _ in range(params.num_iter):
        padded = F.pad(masks, [pad] * 4, mode="replicate")
        out = torch.zeros_like(masks)
        for k, (dy, dx, _) in enumerate(offsets):
            out = out + aff[:, k : k + 1] * _shifted(padded, dy, dx, pad, h, w)
        masks = out
    return masks


def pixel_adaptive_refine(
    image: torch.Tensor, masks: torch.Tensor, params: PARParams = PARParams()
) -> torch.Tensor:
    """AFA ``PAR.forward``: image [B, 3, H, W] (any scale), masks [B, K, h, w] -> [B, K, H, W].

    The masks are first resized to the image (bilinear, align_corners=True, as AFA does), then
    propagated along the colour affinity. Channels are refined independently (the step is linear).
    """
    if masks.shape[-2:] != image.shape[-2:]:
        masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
    return propagate(masks, par_affinity(image, params), params)
