"""KTSE's losses and label maps (Chen et al., ECCV 2024), each a pure function of tensors.

SIE (Eq. 3): pairs in the batch, stacking, the knowledge-transfer hinge. SSR (Eq. 4-7): PAR-refined
pseudo labels with two background scores, the split cross-entropy, the inter-class loss. MGA
(Eq. 8-9): the erase masks and the global and local alignment. The training step that combines
them is :class:`wsss.methods.ktse.KTSE`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.constants import IGNORE_INDEX
from wsss.refine.par import PARParams, pixel_adaptive_refine

# ---------------------------------------------------------------------------------------------
# Small helpers


def max_norm(cams: torch.Tensor, mode: str = "minmax", eps: float = 1e-5) -> torch.Tensor:
    """Per (image, class) normalisation of ReLU(cams): [B, C, H, W] -> [B, C, H, W] in [0, 1].

    ``minmax`` (KTSE ``max_norm``): ReLU(x - min - eps) / (max - min + eps) on x = ReLU(cams).
    ``max`` (Eq. 1): x / (max + eps).
    """
    x = F.relu(cams)
    hi = x.amax(dim=(2, 3), keepdim=True)
    if mode == "minmax":
        lo = x.amin(dim=(2, 3), keepdim=True)
        return F.relu(x - lo - eps) / (hi - lo + eps)
    if mode == "max":
        return x / (hi + eps)
    raise ValueError(f"unknown CAM normalisation {mode!r} (minmax | max)")


def present_max(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Max over the present classes of non-negative maps: [B, C, H, W], [B, C] -> [B, H, W]."""
    return (maps * labels[:, :, None, None]).amax(dim=1)


def stack_pair(a: torch.Tensor, b: torch.Tensor, axis: str = "height") -> torch.Tensor:
    """Concatenates images/maps [..., H, W] of anchor and partner along height or width."""
    if axis not in ("height", "width"):
        raise ValueError(f"stack_axis must be height or width, got {axis!r}")
    return torch.cat([a, b], dim=-2 if axis == "height" else -1)


# ---------------------------------------------------------------------------------------------
# SIE: pairs and the knowledge-transfer loss


def sample_pairs(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A partner in the batch for every anchor: labels [B, C] -> (partner [B] long, shares [B]).

    The authors' rule (``VOC12ClsDataset_SelfSup``): a random class c of the anchor, then a
    random image containing c. Here the images are the other batch images, and only classes that
    some other image has are drawn, so P(j | i) = sum_c P(c | i) [y_jc] / N_c with c uniform
    over i's classes having N_c > 0 partners. shares[i] is False where no other image shares a
    class with i; then the partner is a uniformly random other image (the anchor itself if B = 1).
    """
    b = labels.shape[0]
    y = (labels > 0.5).float()
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    others = y.unsqueeze(0) * (~eye).unsqueeze(2).float()  # [i, j, c] = y_jc for j != i
    count = others.sum(dim=1)  # [i, c] other images with class c
    class_ok = y * (count > 0).float()
    p_class = class_ok / class_ok.sum(dim=1, keepdim=True).clamp(min=1)
    weights = torch.einsum("ic,ijc->ij", p_class / count.clamp(min=1), others)
    shares = weights.sum(dim=1) > 0
    fallback = eye.float() if b == 1 else (~eye).float()
    weights = torch.where(shares.unsqueeze(1), weights, fallback)
    partner = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return partner, shares


def select_stacked(shares: torch.Tensor, n_pairs: int, fallback: str = "random") -> torch.Tensor:
    """Anchors that get a stacked image: shares [B] bool -> indices [n] long.

    Anchors with a class-sharing partner come first (in batch order), then the others;
    ``fallback == "skip"`` drops the others. ``n_pairs <= 0`` keeps every anchor.
    """
    if fallback not in ("random", "skip"):
        raise ValueError(f"pair_fallback must be random or skip, got {fallback!r}")
    order = torch.argsort((~shares).to(torch.int8), stable=True)
    if fallback == "skip":
        order = order[: int(shares.sum())]
    return order if n_pairs <= 0 else order[:n_pairs]


def margin_alignment_loss(
    high: torch.Tensor,
    low: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean_{B,C,H,W}( ReLU(high * m - low * m - margin) * y ): ``low`` should reach ``high``.

    high, low [B, C, H, W] CAM features; labels [B, C] (CFE = multiplication by the label, the
    mean runs over all C channels); mask [B, 1, H, W] or None (m = 1). No stop-gradient: both
    sides receive gradient (the caller detaches where a variant wants it).
    """
    if mask is not None:
        mask = mask.to(high.dtype)
        high, low = high * mask, low * mask
    return (F.relu(high - low - margin) * labels[:, :, None, None]).mean()


def knowledge_transfer_loss(
    single: torch.Tensor, stacked: torch.Tensor, labels: torch.Tensor, margin: float = 0.05
) -> torch.Tensor:
    """Eq. 3: L_kt = ReLU(CFE(F_a) - CFE(F_s)), bidirectional, with the code's margin.

    single [n, C, 2h, w]: the anchor's and the partner's single-image CAM features stacked like
    the images (the teacher, not detached); stacked [n, C, 2h', w']: CAM features of the stacked
    image (resized to the teacher if the backbone's rounding differs); labels [n, C]: the union
    of the two images' labels.
    """
    if stacked.shape[-2:] != single.shape[-2:]:
        stacked = F.interpolate(stacked, single.shape[-2:], mode="bilinear", align_corners=False)
    return margin_alignment_loss(single, stacked, labels, margin)


# ---------------------------------------------------------------------------------------------
# SSR: pseudo labels, cross-entropy and the inter-class loss


def present_keys(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel ids [bg, present classes] per image, padded: labels [B, C] -> (keys, valid) [B, K].

    keys hold 0 for the background and 1..C for classes (ascending); K = 1 + the largest number
    of classes in an image; padded slots have valid False (and key 0).
    """
    present = labels > 0.5
    n = present.sum(dim=1)
    k = int(n.max()) if n.numel() else 0
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k] + 1
    valid_fg = torch.arange(k, device=labels.device).unsqueeze(0) < n.unsqueeze(1)
    bg = torch.zeros_like(n).unsqueeze(1)
    keys = torch.cat([bg, torch.where(valid_fg, order, 0)], dim=1)
    valid = torch.cat([torch.ones_like(valid_fg[:, :1]), valid_fg], dim=1)
    return keys, valid


@torch.no_grad()
def pseudo_labels(
    image: torch.Tensor,
    cams: torch.Tensor,
    labels: torch.Tensor,
    beta_h: float = 0.30,
    beta_l: float = 0.15,
    par: PARParams | None = None,
    down_scale: int = 2,
    dead_class: str = "ignore",
) -> torch.Tensor:
    """Eq. 4 refined by PAR (AFA ``refine_cams_with_bkg_v2`` as KTSE calls it) -> [B, H, W] long.

    image [B, 3, H, W] RGB 0..255; cams [B, C, h, w] raw foreground CAM features; labels [B, C].
    1. A = F / (max(max_spatial F, 0) + 1e-5) (no ReLU), upsampled to H x W.
    2. For each background score t in (beta_h, beta_l): maps [t, A of present classes], resized
       to H/2 x W/2, softmax over these channels, PAR on the half-size image, resized back,
       argmax -> lab_t (0 = background).
    3. Y = lab_h where lab_h > 0 (confident foreground); 0 where lab_h = lab_l = 0 (confident
       background); 255 (ignore) elsewhere.
    4. ``dead_class``: an image with a present class whose CAM is <= 0 everywhere is all 255
       ("ignore"); "background" clamps that max at 0 (the class gets no pixels, the image turns
       background); "code" divides unguarded as the authors do (the class map flips sign).
    ``par`` None = AFA's PAR settings. Not differentiable (argmax): computed without gradient.
    """
    if dead_class not in ("ignore", "background", "code"):
        raise ValueError(f"dead_class must be ignore, background or code, got {dead_class!r}")
    par = par or PARParams()
    b, _, h, w = image.shape
    half = (max(1, h // down_scale), max(1, w // down_scale))
    top = cams.amax(dim=(2, 3), keepdim=True)
    norm = cams / ((top if dead_class == "code" else top.clamp(min=0)) + 1e-5)
    norm = F.interpolate(norm, (h, w), mode="bilinear", align_corners=False)
    keys, valid = present_keys(labels)
    k = keys.shape[1]
    index = (keys - 1).clamp(min=0)[:, :, None, None].expand(-1, -1, h, w)
    fg = norm.gather(1, index)  # [B, K, H, W]; slot 0 (bg) overwritten below
    is_bg = (keys == 0)[:, :, None, None]
    groups = [torch.where(is_bg, torch.full_like(fg, t), fg) for t in (beta_h, beta_l)]
    maps = F.interpolate(torch.cat(groups, dim=1), half, mode="bilinear", align_corners=False)
    invalid = (~valid).repeat(1, 2)[:, :, None, None]
    maps = maps.masked_fill(invalid, float("-inf")).view(b, 2, k, *half).softmax(dim=2)
    small = F.interpolate(image / 255.0, half, mode="bilinear", align_corners=False)
    refined = pixel_adaptive_refine(small, maps.view(b, 2 * k, *half), par)
    refined = F.interpolate(refined, (h, w), mode="bilinear", align_corners=False)
    slot = refined.view(b, 2, k, h, w).argmax(dim=2)  # [B, 2, H, W]
    lab = keys.gather(1, slot.flatten(1)).view(b, 2, h, w)
    lab_h, lab_l = lab[:, 0], lab[:, 1]
    out = lab_h.clone()
    out[lab_h == 0] = IGNORE_INDEX
    out[(lab_h == 0) & (lab_l == 0)] = 0
    if dead_class == "ignore":
        dead = ((top.flatten(1) <= 0) & (labels > 0.5)).any(dim=1)
        out[dead] = IGNORE_INDEX
    return out


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """Mean CE over the selected, non-ignored pixels; 0 if there are none.

    logits [B, K, H, W]; target [B, H, W] long (255 = ignore); select [B, H, W] bool.
    """
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    select = select & (target != IGNORE_INDEX)
    return (ce * select).sum() / select.sum().clamp(min=1)


def ssr_cross_entropy(
    logits: torch.Tensor, pseudo: torch.Tensor, fg_images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 split into its two terms: (L_bg, L_fg), each a mean CE over its pixels.

    logits [B, C+1, H, W] (ReLU'd CAM features at crop size in the code); pseudo [B, H, W]
    (0 bg, 1..C, 255 ignore); fg_images [B] bool: images whose foreground pixels count in L_fg
    (single-class images in the code). L_bg averages over every background pixel of the batch,
    L_fg over the foreground pixels of ``fg_images``. Eq. 5 = L_bg + omega_fg * L_fg.
    """
    labelled = pseudo != IGNORE_INDEX
    bg = pseudo == 0
    fg = labelled & ~bg & fg_images[:, None, None]
    return masked_cross_entropy(logits, pseudo, bg), masked_cross_entropy(logits, pseudo, fg)


def inter_class_loss(
    cams: torch.Tensor, fg_mask: torch.Tensor, detach_max: bool = True
) -> torch.Tensor:
    """Eq. 6-7: sum((V^2nd - V^max) M^f) / (|M^f| + 1e-5), pushing the runner-up class down.

    cams [B, C, H, W] non-negative foreground maps (ReLU'd, crop size in the code); fg_mask
    [B, H, W] bool (M^f). V^max = max over classes; "remove" zeroes every channel equal to the max
    (ties removed together); V^2nd = max of the rest. V^max is detached by default [C].
    """
    vmax = cams.amax(dim=1, keepdim=True)
    rest = cams * (cams != vmax).to(cams.dtype)
    v2nd = rest.amax(dim=1)
    vmax = vmax.squeeze(1)
    if detach_max:
        vmax = vmax.detach()
    m = fg_mask.to(cams.dtype)
    return ((v2nd - vmax) * m).sum() / (m.sum() + 1e-5)


# ---------------------------------------------------------------------------------------------
# MGA: erasing and the two alignment losses


@torch.no_grad()
def erase_masks(
    cams: torch.Tensor,
    labels: torch.Tensor,
    size: tuple[int, int],
    threshold: float = 0.6,
    norm: str = "minmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to keep the anchor: (keep_image [B, 1, H, W], keep_feature [B, 1, h, w]) bool.

    cams [B, C, h, w] raw foreground CAM features. The erased region is where the max over the
    present classes of the normalised ReLU(CAM) reaches ``threshold``: at image size (upsampled
    first) for the image, at feature size for L_local's mask. Hard masks: no gradient.
    """
    relu = F.relu(cams)
    up = F.interpolate(relu, size, mode="bilinear", align_corners=False)
    keep_image = present_max(max_norm(up, norm), labels) < threshold
    keep_feature = present_max(max_norm(relu, norm), labels) < threshold
    return keep_image.unsqueeze(1), keep_feature.unsqueeze(1)


def erase_images(image: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """image [B, 3, H, W] with erased pixels set to ``fill`` [1, 3, 1, 1] (the mean colour, i.e.
    0 after normalisation, as the code's ``img * mask`` on normalised input); keep [B, 1, H, W]."""
    return torch.where(keep, image, fill.to(image.dtype))


def global_alignment_loss(
    anchor: torch.Tensor, erased: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Eq. 8 as coded: mean_{B,C} | GAP(ReLU(F_a)) y - GAP(ReLU(F_m)) y |, neither side detached.

    anchor, erased [B, C, h, w] CAM features; labels [B, C].
    """
    ga = F.relu(anchor).mean(dim=(2, 3)) * labels
    gm = F.relu(erased).mean(dim=(2, 3)) * labels
    return F.l1_loss(ga, gm)


def global_probability_loss(
    anchor_logits: torch.Tensor, erased_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Eq. 8 on class probabilities: mean_{B,C} | sigmoid(s_a) y - sigmoid(s_m) y |.

    anchor_logits, erased_logits [B, C] class scores (the ones L_cls sees); labels [B, C].
    Beyond the authors: it asks the erased image to keep the anchor's *recognition* of each
    present class, and stops pulling once both are confident, where the L1 between pooled maps
    keeps raising every positive position of the erased map for as long as its pooled
    activation is below the anchor's.
    """
    return F.l1_loss(torch.sigmoid(anchor_logits) * labels, torch.sigmoid(erased_logits) * labels)


def local_alignment_loss(
    erased: torch.Tensor,
    anchor: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
    margin: float = 0.05,
) -> torch.Tensor:
    """Eq. 9: L_local = ReLU(CFE(F_m) - CFE(F_a)): the anchor learns what the erased image found.

    erased, anchor [B, C, h, w]; keep [B, 1, h, w] (the code restricts it to the positions not
    erased) or None; ``margin`` 0.05 in the code. Bidirectional (nothing detached).
    """
    return margin_alignment_loss(erased, anchor, labels, margin, keep)
