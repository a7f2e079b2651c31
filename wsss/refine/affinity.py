"""AffinityNet (Ahn and Kwak, CVPR 2018): affinity labels, affinity loss and the random walk.

The pieces, in pipeline order (reference code: jiwoon-ahn/psa, YudeWang/SEAM):

1. Labels (psa ``infer_cls.py`` + ``voc12/data.py``): two dense CRFs on the CAMs with a
   background score ``(1 - max fg) ** alpha``, a low alpha (strong background, confident
   foreground) and a high alpha (weak background, confident background). On the feature grid:
   foreground where the low-alpha CRF says so, background where the high-alpha CRF says
   background, 255 elsewhere (:func:`crf_label_pair`, :func:`block_labels`,
   :func:`combine_la_ha`).
2. Pairs: every pair of grid cells closer than ``radius`` (Eq. 6 of the paper), each unordered
   pair once (:func:`pair_offsets`, :func:`pair_indices`).
3. Affinity ``W_ij = exp(-mean_d |f_i - f_j|)`` (Eq. 5 with the code's channel mean) and the loss
   ``L_bg / 4 + L_fg / 4 + L_neg / 2`` (Eq. 7-9; psa ``train_aff.py``).
4. Random walk (psa ``infer_aff.py``): ``T = D^-1 W^beta`` column-normalised, scores walked
   ``t = 2 ** logt`` steps on the feature grid, then upsampled to the image.

Everything operates on batched tensors; the only Python loops run over the (at most a few
dozen) pair offsets and over walk steps, never over pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from wsss.constants import IGNORE_INDEX
from wsss.refine.crf import CRFParams
from wsss.refine.crf_select import dense_crf

# psa imutils.crf_inference goes through pydensecrf ``unary_from_softmax`` (clip 1e-5).
PSA_UNARY_CLIP = 1e-5
# psa train_aff.py: log(aff + 1e-5) and log(1 + 1e-5 - aff); counts + 1e-5.
LOSS_EPS = 1e-5
# psa voc12/data.py: a block whose pooled scores are all below 1e-5 is crop padding.
NO_SCORE = 1e-5


# ---------------------------------------------------------------------------------------------
# 1. Affinity labels


def background_score(cams: np.ndarray | torch.Tensor, alpha: float):
    """psa ``_crf_with_alpha``: bg = (1 - max_k cam_k) ** alpha; cams [K, H, W] -> [1, H, W].

    With no class present (K = 0) the background is 1 everywhere.
    """
    if cams.shape[0] == 0:
        ones = torch.ones if isinstance(cams, torch.Tensor) else np.ones
        return ones((1, *cams.shape[1:]), dtype=cams.dtype)
    top = cams.max(0, keepdims=True) if isinstance(cams, np.ndarray) else cams.amax(0, True)
    return (1.0 - top) ** alpha


def crf_label(
    image: np.ndarray, cams: np.ndarray, keys: np.ndarray, alpha: float, crf: CRFParams
) -> np.ndarray:
    """Argmax of the CRF on [bg; cams] with bg = (1 - max) ** alpha, as class ids uint8 [H, W].

    image uint8 [H, W, 3]; cams float [K, H, W] normalised to [0, 1]; keys int [K] (1..C).
    Scores are clipped at 1e-5 before -log, exactly pydensecrf's ``unary_from_softmax``.
    """
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    scores = np.concatenate([background_score(cams, alpha), cams]).astype(np.float32)
    probs = dense_crf(image, np.maximum(scores, PSA_UNARY_CLIP), crf)
    ids = np.concatenate([[0], np.asarray(keys)]).astype(np.uint8)
    return ids[probs.argmax(0)]


def crf_label_pair(
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    low_alpha: float,
    high_alpha: float,
    crf: CRFParams,
) -> tuple[np.ndarray, np.ndarray]:
    """(la, ha) label maps uint8 [H, W] of the low- and high-alpha CRFs (psa ``infer_cls``)."""
    return (
        crf_label(image, cams, keys, low_alpha, crf),
        crf_label(image, cams, keys, high_alpha, crf),
    )


def block_labels(labels: torch.Tensor, stride: int, num_labels: int) -> torch.Tensor:
    """The majority label of each ``stride`` x ``stride`` block; [..., H, W] -> [..., h, w].

    psa averages the CRF score maps over 8 x 8 blocks (``imutils.AvgPool2d(8)``) and takes the
    argmax; with one-hot CRF labels that is the block's most frequent label. ``labels`` holds
    ids 0..num_labels-1 and 255 for crop padding; a block made only of padding becomes 255
    (psa's ``no_score_region``). h = ceil(H / stride), w = ceil(W / stride).
    """
    shape = labels.shape
    flat = labels.reshape(-1, *shape[-2:]).long()
    pad = flat == IGNORE_INDEX
    onehot = F.one_hot(flat.masked_fill(pad, 0), num_labels).permute(0, 3, 1, 2).float()
    onehot = onehot * (~pad)[:, None].float()
    votes = F.avg_pool2d(onehot, stride, stride, ceil_mode=True)
    out = votes.argmax(1).masked_fill(votes.sum(1) < NO_SCORE, IGNORE_INDEX)
    return out.reshape(*shape[:-2], *out.shape[-2:]).to(labels.dtype)


def combine_la_ha(la: torch.Tensor, ha: torch.Tensor) -> torch.Tensor:
    """psa ``VOC12AffDataset``: the affinity label map from the la/ha label maps (same shape).

    Foreground where la is foreground; 255 where la says background; 0 where ha says
    background (ha wins); 255 where either is padding.
    """
    label = la.clone()
    label[la == 0] = IGNORE_INDEX
    label[ha == 0] = 0
    label[(la == IGNORE_INDEX) | (ha == IGNORE_INDEX)] = IGNORE_INDEX
    return label


# ---------------------------------------------------------------------------------------------
# 2. Pairs within a radius


@lru_cache(maxsize=16)
def pair_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) offsets with 0 < dy^2 + dx^2 < radius^2 on a half disc (psa ``search_dst``).

    (0, 1..r-1), then dy in 1..r-1 with |dx| < r: each unordered pair appears once
    (34 offsets for radius 5).
    """
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-radius + 1, radius)
        if dx * dx + dy * dy < radius * radius
    ]
    return tuple(offsets)


@lru_cache(maxsize=32)
def _pair_indices_cpu(height: int, width: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.arange(height * width).reshape(height, width)
    src, dst = [], []
    for dy, dx in pair_offsets(radius):
        x0, x1 = max(0, -dx), width - max(0, dx)
        src.append(grid[: height - dy, x0:x1].reshape(-1))
        dst.append(grid[dy:, x0 + dx : x1 + dx].reshape(-1))
    return torch.cat(src), torch.cat(dst)


def pair_indices(
    height: int, width: int, radius: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (src [P], dst [P]) of every in-bounds pair of a height x width grid.

    Ordered offset by offset (:func:`pair_offsets`), row-major inside an offset. Unlike psa's
    ``get_indices_of_pairs``, which takes ``src`` only from the grid minus a (radius - 1) border
    on the left, right and bottom, every cell is a source here, so border pairs are kept.
    """
    src, dst = _pair_indices_cpu(height, width, radius)
    return src.to(device), dst.to(device)


def pair_affinities(features: torch.Tensor, radius: int) -> torch.Tensor:
    """W_ij = exp(-mean_d |f_i - f_j|) for the pairs of :func:`pair_indices` (Eq. 5).

    features [B, D, h, w] -> affinities [B, P] in (0, 1]. The channel mean (psa code) rather
    than Eq. 5's sum fixes the scale independently of D. Computed offset by offset on shifted
    views (same order as :func:`pair_indices`), which avoids gathering [B, D, P] copies.
    """
    _, _, h, w = features.shape
    out = []
    for dy, dx in pair_offsets(radius):
        x0, x1 = max(0, -dx), w - max(0, dx)
        src = features[:, :, : h - dy, x0:x1]
        dst = features[:, :, dy:, x0 + dx : x1 + dx]
        out.append(torch.exp(-(src - dst).abs().mean(1)).flatten(1))
    return torch.cat(out, 1)


def pair_labels(
    labels: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg_pos, fg_pos, neg) bool [B, P] for the pairs of :func:`pair_indices`.

    labels int [B, h, w], 255 = ignore. bg_pos: both 0; fg_pos: the same class > 0; neg:
    different classes; pairs touching 255 are in none of them (psa
    ``ExtractAffinityLabelInRadius``).
    """
    _, h, w = labels.shape
    src, dst = pair_indices(h, w, radius, labels.device)
    flat = labels.flatten(1)
    a, b = flat[:, src], flat[:, dst]
    valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
    same = a == b
    return same & (a == 0), same & (a != 0) & valid, ~same & valid


# ---------------------------------------------------------------------------------------------
# 3. Loss


def affinity_loss(
    affinities: torch.Tensor,
    labels: torch.Tensor,
    radius: int,
    weights: tuple[float, float, float] = (0.25, 0.25, 0.5),
) -> dict[str, torch.Tensor]:
    """The AffinityNet loss (paper Eq. 7-9; psa ``train_aff.py``), each term weighted.

    affinities [B, P] from :func:`pair_affinities`; labels int [B, h, w] (255 ignored).
    L_bg = -sum_bg log(W + 1e-5) / (|bg| + 1e-5), L_fg likewise over the foreground positive
    pairs, L_neg = -sum_neg log(1 + 1e-5 - W) / (|neg| + 1e-5); counts over the whole batch.
    Returns {"bg": w0 L_bg, "fg": w1 L_fg, "neg": w2 L_neg}, psa weights 1/4, 1/4, 1/2.
    """
    bg, fg, neg = (m.float() for m in pair_labels(labels, radius))
    pos_log = -torch.log(affinities + LOSS_EPS)
    neg_log = -torch.log(1.0 + LOSS_EPS - affinities)
    terms = {
        "bg": (bg * pos_log).sum() / (bg.sum() + LOSS_EPS),
        "fg": (fg * pos_log).sum() / (fg.sum() + LOSS_EPS),
        "neg": (neg * neg_log).sum() / (neg.sum() + LOSS_EPS),
    }
    return {k: w * v for (k, v), w in zip(terms.items(), weights, strict=True)}


# ---------------------------------------------------------------------------------------------
# 4. Random walk


def dense_affinity(affinities: torch.Tensor, height: int, width: int, radius: int) -> torch.Tensor:
    """The symmetric affinity matrix [N, N] (N = height * width) from pair affinities [P].

    W_ii = 1; W_ij = W_ji = affinity for pairs within the radius; 0 elsewhere (psa
    ``resnet38_aff.forward(to_dense=True)``).
    """
    n = height * width
    src, dst = pair_indices(height, width, radius, affinities.device)
    matrix = torch.eye(n, dtype=affinities.dtype, device=affinities.device)
    matrix[src, dst] = affinities
    matrix[dst, src] = affinities
    return matrix


def transition_matrix(affinity: torch.Tensor, beta: float) -> torch.Tensor:
    """T = W^beta / colsum(W^beta): column-stochastic [N, N] (psa ``infer_aff``; Eq. 10)."""
    powered = affinity**beta
    return powered / powered.sum(0, keepdim=True)


def random_walk(scores: torch.Tensor, transition: torch.Tensor, logt: int) -> torch.Tensor:
    """Scores [K, N] walked t = 2 ** logt steps: scores @ T^t (paper Eq. 11).

    psa squares T logt times (logt N^3 multiply-adds); applying T t times to the K score rows
    costs t K N^2, far less when K << N, and gives the same result up to rounding.
    """
    for _ in range(2**logt):
        scores = scores @ transition
    return scores


def walk_scores(
    features: torch.Tensor,
    scores: torch.Tensor,
    radius: int,
    beta: float,
    logt: int,
) -> torch.Tensor:
    """Random walk of score maps on an affinity grid.

    features [D, h, w] of the (padded) image; scores [K, h, w] already pooled to that grid.
    Returns walked scores [K, h, w].
    """
    _, h, w = features.shape
    affinity = dense_affinity(pair_affinities(features[None], radius)[0], h, w, radius)
    walked = random_walk(
        scores.reshape(scores.shape[0], -1), transition_matrix(affinity, beta), logt
    )
    return walked.reshape(scores.shape)


def upsample_scores(grid_scores: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Grid scores [K, h, w] -> [K, H, W]: bilinear to (h * stride, w * stride), then cropped to
    ``size`` (the padding added before the walk is removed; psa ``infer_aff``)."""
    h, w = grid_scores.shape[-2:]
    up = F.interpolate(
        grid_scores[None].float(), (h * stride, w * stride), mode="bilinear", align_corners=False
    )[0]
    return up[:, : size[0], : size[1]]


def walk_labels(
    scores: np.ndarray,
    keys: np.ndarray,
    image: np.ndarray | None = None,
    crf: CRFParams | None = None,
) -> np.ndarray:
    """Pseudo mask uint8 [H, W] from walked [bg; classes] scores [K+1, H, W] (psa ``infer_aff``:
    the argmax). With ``crf`` (and the uint8 RGB image) the scores, normalised to sum to one,
    are refined by a dense CRF first."""
    ids = np.concatenate([[0], np.asarray(keys)]).astype(np.uint8)
    if crf is not None and len(keys):
        probs = scores / np.maximum(scores.sum(0, keepdims=True), 1e-5)
        scores = dense_crf(image, probs, crf)
    return ids[scores.argmax(0)]
