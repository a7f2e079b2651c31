"""Complementary Patch (CP) pairs of CPN (Zhang et al., ICCV 2021, Sec. 3.1-3.2).

An image is split into patches (grid cells or SLIC superpixels); each patch is hidden with
probability p_h. I_h shows the visible patches and I_h' the others, so every pixel is shown in
exactly one of them. Hidden pixels take the value ``fill``; with fill = the network's input mean
a hidden pixel is 0 after normalisation, so normalise(I_h) + normalise(I_h') = normalise(I)
bit for bit (and, with fill = 0, I_h + I_h' = I).

    parts, counts = superpixel_partition(images, n_segments=200)       # or grid_partition
    visible, hidden_count = random_visibility(parts, counts, hide_prob=0.5)
    lam = visible_fraction(visible, counts, hidden_count, "pixels")    # lambda of Eq. 6
    image_h, image_hb = complementary_pair(images, visible, fill)

Everything is batched: masks come from one gather of per-patch coin flips, never a loop over
pixels. SLIC runs once per image on the CPU (about 15 ms for a 128 px crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class CPPair:
    """One CP pair per image of a batch."""

    hidden: Tensor  # I_h float [B, 3, H, W]: the visible patches of I, fill elsewhere
    complement: Tensor  # I_h' float [B, 3, H, W]: the hidden patches of I, fill elsewhere
    visible: Tensor  # bool [B, H, W]: True where I_h shows I (False where I_h' does)
    lam: Tensor  # float [B]: lambda of Eq. 6 for I_h; lambda' = 1 - lam for I_h'


def grid_partition(sizes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Grid cells of side ``sizes[b]`` px: (cell id long [B, H, W], number of cells long [B]).

    Cells are numbered row-major from 0; the last row/column may be narrower.
    """
    sizes = sizes.long().view(-1, 1, 1)
    rows = torch.arange(height, device=sizes.device).view(1, -1, 1) // sizes
    cols = torch.arange(width, device=sizes.device).view(1, 1, -1) // sizes
    n_cols = (width + sizes - 1) // sizes
    n_rows = (height + sizes - 1) // sizes
    return rows * n_cols + cols, (n_rows * n_cols).view(-1)


def superpixel_partition(
    images: Tensor, n_segments: int = 200, compactness: float = 10.0
) -> tuple[Tensor, Tensor]:
    """SLIC superpixels of RGB images [B, 3, H, W] in 0..255: (ids long [B, H, W], counts [B]).

    skimage's SLIC on the un-normalised uint8 crop (Lab space, ``compactness``, about
    ``n_segments`` segments); the ids are relabelled to 0..n-1 per image.
    """
    from skimage.segmentation import slic

    rgb = images.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    parts, counts = [], []
    for image in rgb:  # one SLIC call per image (CPU); the masking itself is batched
        labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
        uniq, inverse = np.unique(labels, return_inverse=True)
        parts.append(inverse.reshape(labels.shape))
        counts.append(len(uniq))
    parts_t = torch.from_numpy(np.stack(parts).astype(np.int64)).to(images.device)
    return parts_t, torch.tensor(counts, dtype=torch.long, device=images.device)


def random_visibility(
    parts: Tensor, counts: Tensor, hide_prob: float = 0.5, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Hide each patch independently with ``hide_prob``: (visible bool [B, H, W], hidden count [B]).

    parts long [B, H, W] with ids in 0..counts[b]-1. One coin per (image, patch id); the mask
    is a gather of the coins by the id map.
    """
    b = parts.shape[0]
    n_max = int(counts.max())
    coins = torch.rand(b, n_max, device=parts.device, generator=generator) < hide_prob
    coins &= torch.arange(n_max, device=parts.device)[None] < counts[:, None]  # only real ids
    hidden = coins.gather(1, parts.reshape(b, -1)).view_as(parts)
    return ~hidden, coins.sum(1)


def visible_fraction(visible: Tensor, counts: Tensor, hidden_count: Tensor, mode: str) -> Tensor:
    """lambda of Eq. 6 for I_h, float [B].

    ``pixels``: the visible pixel fraction (reference code). ``patches``: 1 - N_h / N (the
    paper's formula, N_h hidden of N patches; equal to ``pixels`` for equal-sized patches).
    """
    if mode == "pixels":
        return visible.flatten(1).float().mean(1)
    if mode == "patches":
        return 1.0 - hidden_count.float() / counts.float()
    raise ValueError(f"unknown lambda mode {mode!r} (pixels | patches)")


def complementary_pair(images: Tensor, visible: Tensor, fill: Tensor) -> tuple[Tensor, Tensor]:
    """(I_h, I_h') of images [B, 3, H, W]: I where ``visible`` [B, H, W] (resp. not), else fill.

    fill [3]. Every pixel takes I in exactly one of the two, so
    (I_h - fill) + (I_h' - fill) = I - fill exactly.
    """
    mask = visible[:, None]
    fill = fill.to(images).view(1, -1, 1, 1).expand_as(images)
    return torch.where(mask, images, fill), torch.where(mask, fill, images)


def make_cp_pair(
    images: Tensor,
    fill: Tensor,
    *,
    strategy: str = "superpixel",
    n_segments: int = 200,
    compactness: float = 10.0,
    grid_fractions: tuple[float, ...] = (0.125, 0.25),
    hide_prob: float = 0.5,
    lam_mode: str = "pixels",
) -> CPPair:
    """A CP pair per image of RGB ``images`` [B, 3, H, W] (Sec. 3.2).

    ``superpixel``: SLIC with ``n_segments`` (S_N). ``grid``: square cells whose side is
    ``round(f * min(H, W))`` with f drawn uniformly per image from ``grid_fractions`` (the
    paper's K = {56, 112} px of a 448 crop = (1/8, 1/4)).
    """
    b, _, h, w = images.shape
    if strategy == "superpixel":
        parts, counts = superpixel_partition(images, n_segments, compactness)
    elif strategy == "grid":
        side = torch.tensor([max(1, round(f * min(h, w))) for f in grid_fractions])
        choice = torch.randint(len(grid_fractions), (b,))
        parts, counts = grid_partition(side[choice].to(images.device), h, w)
    else:
        raise ValueError(f"unknown CP strategy {strategy!r} (superpixel | grid)")
    visible, hidden_count = random_visibility(parts, counts, hide_prob)
    lam = visible_fraction(visible, counts, hidden_count, lam_mode)
    hidden, complement = complementary_pair(images, visible, fill)
    return CPPair(hidden, complement, visible, lam.to(images.dtype))
