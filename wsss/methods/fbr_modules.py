"""FBR network parts: TAP pooling, the two projection heads, the BG predictor, the NROI bank.

Yin et al., "Fine-grained Background Representation for Weakly Supervised Semantic
Segmentation", IEEE TCSVT 2024 (arXiv 2406.15755). The heads and the bank exist only for
training; ``FBRNet.cam`` is the plain CAM of the host, so export and serving see a CamNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.methods.eps import foreground_maps
from wsss.models.cam_net import CamNet


def thresholded_average_pool(f: Tensor, threshold: float) -> Tensor:
    """TAP (paper Eq. 11, Bae et al. ECCV'20; FBR code ``ThresholdedAvgPool2d``).

    f: [B, L, h, w] -> [B, L]. Per image and feature channel k: t_k = threshold * max_i f_k(i);
    keep f_k(i) where f_k(i) > t_k; average the kept values over the number of positive kept
    values (at least 1). The classification score is the 1x1 classifier applied to this vector.
    """
    flat = f.flatten(2)
    t = threshold * flat.amax(dim=2, keepdim=True)
    kept = torch.where(flat > t, flat, torch.zeros_like(flat))
    count = (kept > 0).sum(dim=2).clamp(min=1)
    return kept.sum(dim=2) / count


class NROIBank(nn.Module):
    """FIFO queue of NROIs (negative regions of interest), paper Sec. III-B2 "BG memory bank".

    All state lives in buffers (``feats`` [size, D], ``ptr`` and ``count`` scalars), so the bank
    is saved in every checkpoint and restored on resume. Under DDP the caller must enqueue the
    same rows on every rank (FBR all-gathers the NROIs first); DDP's per-forward buffer
    broadcast from rank 0 then leaves every rank's bank unchanged.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"NROI bank size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("feats", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        """Appends rows [n, D] (detached); the oldest entries are overwritten when full."""
        n = rows.shape[0]
        if n == 0:
            return
        if n > self.size:  # only the newest ``size`` rows survive
            rows, n = rows[-self.size :], self.size
        pos = (self.ptr + torch.arange(n, device=self.feats.device)) % self.size
        self.feats[pos] = rows.detach().to(self.feats)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def ordered(self) -> Tensor:
        """The stored rows, oldest first: [len(self), D]."""
        n = len(self)
        if n < self.size:
            return self.feats[:n]
        p = int(self.ptr)
        return torch.cat([self.feats[p:], self.feats[:p]])

    def stored(self) -> Tensor:
        """The filled part of the storage (unordered), detached: [len(self), D]."""
        return self.feats[: len(self)].detach()

    def sample_index(self, shape: tuple[int, ...], generator: torch.Generator | None = None):
        """Uniform indices into ``stored()`` with replacement (paper: NROIs drawn at random)."""
        return torch.randint(
            len(self), shape, device=self.feats.device, generator=generator, dtype=torch.long
        )


@torch.no_grad()
def batched_kmeans(x: Tensor, mask: Tensor, k: int, iters: int = 10) -> tuple[Tensor, Tensor]:
    """K-means of every image's masked pixels at once (NROI extraction, Sec. III-B2).

    x: [B, P, D] features; mask: [B, P] bool (background pixels); -> centres [B, k, D] and
    valid [B, k] bool. Deterministic maximin initialisation (first centre: the masked pixel
    nearest the masked mean; each next one: the masked pixel farthest from the chosen ones),
    then ``iters`` Lloyd steps, all batched. An image with at most k masked pixels returns those
    raw features (the FBR code's rule); a cluster left empty (duplicate points) is invalid.
    """
    b, p, d = x.shape
    x = x.float()
    maskf = mask.float()
    n = mask.sum(dim=1)  # [B]
    sq = (x * x).sum(-1)  # [B, P]

    def dist2(centres: Tensor) -> Tensor:  # [B, P, k'] squared distances
        cross = torch.einsum("bpd,bkd->bpk", x, centres)
        return (sq[..., None] - 2 * cross + (centres * centres).sum(-1)[:, None, :]).clamp(min=0)

    rows = torch.arange(b, device=x.device)
    mean = (x * maskf[..., None]).sum(1) / n.clamp(min=1)[:, None].float()
    d0 = dist2(mean[:, None, :])[..., 0].masked_fill(~mask, float("inf"))
    centres = [x[rows, d0.argmin(dim=1)]]
    nearest = dist2(centres[0][:, None, :])[..., 0].masked_fill(~mask, -1.0)
    for _ in range(1, k):  # loop over the k centres, never over pixels
        c = x[rows, nearest.argmax(dim=1)]
        centres.append(c)
        nearest = torch.minimum(nearest, dist2(c[:, None, :])[..., 0].masked_fill(~mask, -1.0))
    c = torch.stack(centres, dim=1)  # [B, k, D]

    counts = torch.zeros(b, k, device=x.device)
    for _ in range(max(1, iters)):
        assign = F.one_hot(dist2(c).argmin(dim=2), k).float() * maskf[..., None]  # [B, P, k]
        counts = assign.sum(1)
        sums = torch.einsum("bpk,bpd->bkd", assign, x)
        c = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], c)
    assign = F.one_hot(dist2(c).argmin(dim=2), k).float() * maskf[..., None]
    valid = assign.sum(1) > 0

    few = n <= k  # raw features of images with too few background pixels
    if few.any():
        order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)
        take = order[:, : min(k, p)]
        raw = torch.gather(x, 1, take[..., None].expand(-1, -1, d))
        raw_valid = torch.arange(take.shape[1], device=x.device)[None, :] < n[:, None]
        if take.shape[1] < k:
            pad = k - take.shape[1]
            raw = F.pad(raw, (0, 0, 0, pad))
            raw_valid = F.pad(raw_valid, (0, pad), value=False)
        c = torch.where(few[:, None, None], raw, c)
        valid = torch.where(few[:, None], raw_valid, valid)
    return c, valid


class FBRNet(CamNet):
    """CamNet + FG/BG projection heads + BG predictor + NROI bank (paper Fig. 2).

    - ``proj_fg``: 1x1 conv L->D (no bias, Xavier) + ReLU gives z_fg (queries, prototypes).
    - ``proj_bg``: same structure, separate weights; z_bg = ReLU(proj_bg(f)) builds the NROIs.
    - BG predictor psi: BN(D) -> ReLU -> Dropout -> 1x1 conv D->1 (no bias) on the pre-ReLU
      ``proj_bg(f)`` (Eq. 6; BN trained normally: backbone BN freezing does not reach it).
    - scores: TAP (Eq. 11) of f, then the classifier; ``cams`` stay ``classifier(f)``.
    - ``host_cam_mode`` None: a plain CAM host (C maps). Otherwise EPS's host (the paper's I+S
      setting, PPC = EPS + ...): C + 1 maps, background last, "cams_all" in the output, and
      ``cam`` / ``host_maps`` read the classes out as EPS does (``eps.foreground_maps``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        proj_dim: int = 128,
        bank_size: int = 50_000,
        tap_threshold: float | None = 0.1,
        bg_dropout: float = 0.5,
        host_cam_mode: str | None = None,
    ):
        super().__init__(backbone, num_classes)
        channels = backbone.out_channels
        self.tap_threshold = tap_threshold
        self.host_cam_mode = host_cam_mode
        if host_cam_mode is not None:  # EPS host: C + 1 maps, background last
            self.classifier = nn.Conv2d(channels, num_classes + 1, 1, bias=False)
            nn.init.xavier_uniform_(self.classifier.weight)
        self.proj_fg = nn.Conv2d(channels, proj_dim, 1, bias=False)
        self.proj_bg = nn.Conv2d(channels, proj_dim, 1, bias=False)
        self.bg_bn = nn.BatchNorm2d(proj_dim)
        self.bg_dropout = nn.Dropout(bg_dropout)
        self.bg_classifier = nn.Conv2d(proj_dim, 1, 1, bias=False)
        for conv in (self.proj_fg, self.proj_bg, self.bg_classifier):
            nn.init.xavier_uniform_(conv.weight)
        nn.init.ones_(self.bg_bn.weight)
        nn.init.constant_(self.bg_bn.bias, 1e-4)  # FBR code init
        self.bank = NROIBank(bank_size, proj_dim)

    def scores(self, f: Tensor, cams: Tensor) -> Tensor:
        """Classification logits [B, C]: TAP then the 1x1 classifier, or GAP of the CAMs."""
        if self.tap_threshold is None:
            return cams.mean(dim=(2, 3))
        pooled = thresholded_average_pool(f, self.tap_threshold)
        return F.linear(pooled, self.classifier.weight[: self.num_classes].flatten(1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """CamNet's keys ("logits" [B, C] from TAP) plus the training-only maps:

        "z_fg", "z_bg" (post-ReLU) and "bg_hidden" = ReLU(BN(proj_bg f)) [B, D, h, w];
        "bg_logits" (psi) [B, 1, h, w]; with the EPS host also "cams_all" [B, C+1, h, w].
        """
        f = self.features(x)[-1]
        maps = self.classifier(f)
        cams = maps[:, : self.num_classes]
        bg_pre = self.proj_bg(f)
        bg_hidden = torch.relu(self.bg_bn(bg_pre))
        host = {} if self.host_cam_mode is None else {"cams_all": maps}
        return {
            **host,
            "logits": self.biased(self.scores(f, cams)),
            "cams": cams,
            "features": f,
            "z_fg": torch.relu(self.proj_fg(f)),
            "z_bg": torch.relu(bg_pre),
            "bg_hidden": bg_hidden,
            "bg_logits": self.bg_classifier(self.bg_dropout(bg_hidden)),
        }

    def host_maps(self, maps: Tensor) -> Tensor:
        """The host's class maps [B, C, h, w] >= 0 from the classifier's output: ReLU(CAM), or
        EPS's read-out of its C + 1 maps."""
        if self.host_cam_mode is None:
            return torch.relu(maps)
        return foreground_maps(maps, self.host_cam_mode)

    def cam(self, x: Tensor) -> Tensor:
        """The host's foreground maps [B, C, h, w]; the FBR heads are not run (no inference
        cost)."""
        return self.host_maps(self.classifier(self.features(x)[-1]))

    def head_modules(self) -> list[nn.Module]:
        return [self.classifier, self.proj_fg, self.proj_bg, self.bg_bn, self.bg_classifier]
