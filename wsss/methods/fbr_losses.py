"""FBR losses and their inputs: CAM pseudo labels, prototypes, queries, negative sampling.

Yin et al., TCSVT 2024 (arXiv 2406.15755). The text extraction lost the equation bodies; the
forms below are rebuilt from the prose, the cited works (PPC, ReCo) and the authors' code
(XuYin94/FBR ``module/train.py``, ``region_utils.py``), see the spec shared/specs/seed-fbr.md.
Notation: B images, C foreground classes (the background index is C, last, as in the code),
P pixels per image on the contrast grid, N = B * P, D the projection dimension.
Everything is batched: no Python loop over pixels, queries or images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

QUERY_MODES = ("threshold", "all", "percentile_entropy")


def normalized_cams(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """Min-max normalised ReLU'd CAMs per (image, class): [B, C, h, w] -> [B, C, h, w] in [0, 1).

    relu(x - min - eps) / (max - min + eps) (the ``max_norm`` of the FBR/SEAM code).
    """
    x = torch.relu(cams).flatten(2)
    low = x.amin(dim=2, keepdim=True)
    top = x.amax(dim=2, keepdim=True)
    return (torch.relu(x - low - eps) / (top - low + eps)).reshape(cams.shape)


@torch.no_grad()
def contrast_pseudo_labels(
    cams: Tensor, labels: Tensor, bg_score: float = 0.10
) -> tuple[Tensor, Tensor]:
    """CAM pseudo labels for the contrastive losses (FBR code ``get_contrast_loss``).

    cams [B, C, h, w] raw; labels [B, C] multi-hot -> (scores [B, C, h, w]: normalised CAMs of
    the image's classes, 0 for absent ones; labels [B, h, w] long in 0..C, C = background).
    A pixel takes its best present class when that score beats the constant ``bg_score``.
    """
    scores = normalized_cams(cams) * labels[:, :, None, None]
    bg = torch.full_like(scores[:, :1], bg_score)
    return scores, torch.cat([scores, bg], dim=1).argmax(dim=1)


@torch.no_grad()
def background_target(cams: Tensor, labels: Tensor, threshold: float = 0.05) -> Tensor:
    """Pseudo BG labels Y_bg of Eq. 6: [B, C, h, w] raw CAMs -> float [B, 1, h, w] in {0, 1}.

    1 where the summed max-normalised CAMs of the image's classes are below ``threshold``
    (raw CAM, feature resolution; code ``get_background_label``).
    """
    cam = torch.relu(cams) * labels[:, :, None, None]
    norm = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return (norm.sum(dim=1, keepdim=True) < threshold).float()


def bg_segmentation_loss(bg_logits: Tensor, target: Tensor) -> Tensor:
    """Auxiliary BG segmentation L_seg (Eq. 6): BCE(sigmoid(psi), Y_bg) averaged over pixels.

    bg_logits [B, 1, h, w] (psi(BN(proj_bg f))); target [B, 1, h, w] in {0, 1} (no gradient).
    """
    return F.binary_cross_entropy_with_logits(bg_logits, target.detach())


def fg_bg_similarity_loss(z_fg: Tensor, bg_hidden: Tensor) -> Tensor:
    """Code-only L_sim (not in the paper): mean over pixels of cos(z_fg, ReLU(BN(proj_bg f))).

    z_fg, bg_hidden [B, D, h, w] -> scalar; minimising it keeps the two heads apart.
    """
    return F.cosine_similarity(z_fg, bg_hidden, dim=1, eps=1e-8).mean()


@torch.no_grad()
def class_prototypes(feats: Tensor, scores: Tensor, k: int) -> Tensor:
    """FG prototypes (Eq. 3), detached and L2-normalised: [N, D], [N, C] -> [C, D].

    For each class c, the k pixels of the batch with the largest scores[:, c] (Omega_c) give
    p_c = sum M_c(i) z(i) / sum M_c(i) over Omega_c, then p_c / |p_c|. A class without any
    positive score gets a zero prototype.
    """
    k = max(1, min(k, scores.shape[0]))
    values, index = scores.t().topk(k, dim=1)  # [C, k]
    weighted = (values[..., None] * feats[index]).sum(dim=1)
    proto = weighted / values.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return F.normalize(proto, dim=1)


@torch.no_grad()
def select_queries(
    scores: Tensor,
    pixel_labels: Tensor,
    mode: str = "threshold",
    threshold: float = 0.4,
    percentile: float = 0.6,
    entropy_quantile: float = 0.1,
    bg_score: float = 0.10,
) -> Tensor:
    """Query pixels Q_c (Eq. 4): scores [B, C, P], pixel_labels [B, P] (C = bg) -> bool [B, P].

    - ``threshold`` (paper, adaptive query): labelled c and M_c(i) < threshold (0.4).
    - ``all`` (naive query): every pixel with a foreground label.
    - ``percentile_entropy`` (FBR code ``get_reliable_pseudo_label``): a pixel labelled c is
      "sure" when its score is above the ``percentile`` position of the sorted scores > 0.05 of
      the image's c pixels; a query is a foreground pixel that is not sure and whose entropy of
      softmax([scores, bg_score]) is above the image's ``entropy_quantile`` quantile (background
      pixels count with entropy 0).
    """
    b, c, p = scores.shape
    fg = pixel_labels < c
    if mode == "all":
        return fg
    if mode == "threshold":
        own = scores.gather(1, pixel_labels.clamp(max=c - 1)[:, None]).squeeze(1)
        return fg & (own < threshold)
    if mode != "percentile_entropy":
        raise ValueError(f"unknown FBR query mode {mode!r}; choose one of {QUERY_MODES}")
    region = F.one_hot(pixel_labels, c + 1)[..., :c].permute(0, 2, 1).bool()  # [B, C, P]
    cand = region & (scores > 0.05)
    ranked = torch.where(cand, scores, torch.full_like(scores, float("inf"))).sort(dim=2).values
    n = cand.sum(dim=2)
    pos = (n.float() * percentile).floor().long().clamp(min=0, max=p - 1)
    conf = ranked.gather(2, pos[..., None])  # inf where a class has no candidate
    sure = (region & (scores > conf)).any(dim=1)
    probs = torch.softmax(torch.cat([scores, torch.full_like(scores[:, :1], bg_score)], 1), 1)
    entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=1) * fg
    cut = torch.quantile(entropy, entropy_quantile, dim=1, keepdim=True)
    return fg & ~sure & (entropy > cut)


@torch.no_grad()
def active_negative_index(
    prototypes: Tensor,
    in_batch: Tensor,
    query_class: Tensor,
    pixel_class: Tensor,
    n_negatives: int = 256,
    temperature: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """Active sampling of intra-foreground negatives (Eq. 8 and Sec. III-B3).

    prototypes [C, D] L2-normalised; in_batch [C] bool (C_b, the FG classes of the batch's
    pseudo labels); query_class [Q]; pixel_class [N] (labels of all batch pixels, C = bg) ->
    [Q, n_negatives] indices into the N pixels, or None when |C_b| < 2.
    Edges E(c, j) = cos(p_c, p_j) over C_b (BG excluded); a query of class c draws each
    negative's class j ~ softmax_j(E(c, j) / temperature) over C_b \\ {c}, then a pixel
    uniformly among all batch pixels labelled j.
    """
    c = prototypes.shape[0]
    if int(in_batch.sum()) < 2:
        return None
    q = query_class.shape[0]
    if q == 0:
        return torch.zeros(0, n_negatives, dtype=torch.long, device=prototypes.device)
    allowed = in_batch[None, :] & ~torch.eye(c, dtype=torch.bool, device=prototypes.device)
    logits = (prototypes @ prototypes.t() / temperature).masked_fill(~allowed, float("-inf"))
    # Inverse-CDF draws (much faster than torch.multinomial for Q x 256 samples); with
    # right=True a class of weight 0 is never returned.
    cdf = torch.softmax(logits, dim=1).nan_to_num(0.0).cumsum(dim=1)[query_class]  # [Q, C]
    u = torch.rand(q, n_negatives, generator=generator, device=cdf.device) * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u, right=True).clamp(max=c - 1)
    counts = torch.bincount(pixel_class, minlength=c + 1)
    order = torch.argsort(pixel_class, stable=True)  # pixels grouped by class
    start = counts.cumsum(0) - counts
    u = torch.rand(drawn.shape, generator=generator, device=drawn.device)
    n_j = counts[drawn]
    offset = (u * n_j).long().clamp(max=(n_j - 1).clamp(min=0))
    return order[start[drawn] + offset]


def sampled_similarity(queries: Tensor, keys: Tensor, index: Tensor) -> Tensor:
    """Dot products with sampled keys: [Q, D], [K, D], index [Q, M] -> [Q, M].

    out[q, m] = queries[q] . keys[index[q, m]], via whichever intermediate is smaller.
    """
    m = index.shape[1]
    if keys.shape[0] <= m * keys.shape[1]:  # the full [Q, K] product is the smaller tensor
        return (queries @ keys.t()).gather(1, index)
    return torch.einsum("qd,qmd->qm", queries, keys[index])


def prototype_contrast_loss(
    queries: Tensor,
    positives: Tensor,
    keys: Tensor,
    key_index: Tensor,
    query_class: Tensor,
    num_classes: int,
    tau: float,
) -> Tensor:
    """Prototype-based contrastive loss L_PCL (Eq. 5), instantiated as L_FB (Eq. 7), L_IF (Eq. 9).

    queries [Q, D] (gradient flows here only), positives [Q, D] (the prototype of each query's
    class), keys [K, D] (NROI bank or batch pixel features), key_index [Q, M] (the M negatives
    of each query), query_class [Q], num_classes = |C_b|. Cosine similarities (all three are
    L2-normalised here; positives and keys are detached):
        l(q) = -log exp(q.p/tau) / (exp(q.p/tau) + sum_m exp(q.k_m/tau))
        L = (1/|C_b|) sum_c mean_{q in Q_c} l(q)      (a class without queries adds 0).
    """
    if queries.shape[0] == 0 or num_classes == 0:
        return queries.sum() * 0.0
    q = F.normalize(queries, dim=1)
    pos = F.normalize(positives.detach(), dim=1)
    neg = sampled_similarity(q, F.normalize(keys.detach(), dim=1), key_index)
    logits = torch.cat([(q * pos).sum(dim=1, keepdim=True), neg], dim=1) / tau
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    per_query = F.cross_entropy(logits, target, reduction="none")
    classes, inverse = torch.unique(query_class, return_inverse=True)
    sums = per_query.new_zeros(classes.shape[0]).index_add(0, inverse, per_query)
    counts = torch.bincount(inverse, minlength=classes.shape[0]).to(per_query)
    return (sums / counts).sum() / num_classes
