"""FBR: Fine-grained Background Representation (Yin et al., IEEE TCSVT 2024, arXiv 2406.15755).

FBR is a set of training-time modules added to a CAM host. Here the host is the image-level
("I") CAM baseline with TAP pooling (Eq. 11); the modules are:
- a FG projection head (queries, prototypes) and a BG projection head (NROIs), 1x1 conv + ReLU;
- NROIs: per-image K-means centres of the BG features, kept in a FIFO bank (a buffer of the
  network), contrasted against uncertain FG queries: L_FB (Eq. 7);
- intra-foreground contrast with actively sampled negatives: L_IF (Eq. 8-9);
- an auxiliary BG predictor on the BG head, trained on low-CAM pixels: L_seg (Eq. 6).
Total (Eq. 10): L_cls + lambda_fb L_FB + lambda_if L_IF + lambda_seg L_seg. The heads and the
bank are unused at inference: ``model.cam`` is the host's CAM.

Where the released code differs from the paper, the paper is the default and the code's
behaviour a config option (each field says which).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from wsss import distributed
from wsss.config import BENCHMARK_PRESETS, BackboneConfig, OptimConfig, set_bg_threshold
from wsss.methods.base import Method, StepInfo
from wsss.methods.cam import classification_loss
from wsss.methods.fbr_losses import (
    QUERY_MODES,
    active_negative_index,
    background_target,
    bg_segmentation_loss,
    class_prototypes,
    contrast_pseudo_labels,
    fg_bg_similarity_loss,
    normalized_cams,
    prototype_contrast_loss,
    select_queries,
)
from wsss.methods.fbr_modules import FBRNet, NROIBank, batched_kmeans
from wsss.models.cam_net import CamNet

POOLINGS = ("tap", "gap")


@dataclass
class FBRConfig:
    # -- host classifier ------------------------------------------------------------------
    pooling: str = "tap"  # tap (Sec. III-B1, Eq. 11) | gap (the appendix ablation, 74.7 vs 75.0)
    tap_threshold: float = 0.1  # theta of TAP, Eq. 11 (paper and code)
    # -- heads (Sec. III-B1, IV-A) --------------------------------------------------------
    proj_dim: int = 128  # D of P_fg and P_bg (paper: 128 for WSSS, 64 for WSIS)
    bg_dropout: float = 0.5  # dropout inside the BG predictor psi (code ``dropout7``)
    # -- CAM pseudo labels on the contrast grid (code ``get_contrast_loss``) -----------------
    contrast_size: int = 16  # z_fg, z_bg, CAM resized to S x S (code: 16x16); 0 = feature grid
    bg_score: float = 0.10  # constant BG score against normalised CAMs (code ``bg_thres=0.10``)
    # -- prototypes (Eq. 3) ----------------------------------------------------------------
    prototype_topk_div: int = 16  # top-K = h*w // 16 pixels of the batch per class (code)
    # Paper: "for each FG class in the batch, the top pixels with high CAM scores". True ranks
    # only images labelled with the class; False is the code (its min-max CAMs rank pixels of
    # images without the class too, although an in-place write in ``get_reliable_pseudo_label``
    # then limits them to pixels labelled c).
    prototype_label_mask: bool = True
    # -- queries (Eq. 4) -------------------------------------------------------------------
    query_mode: str = "threshold"  # threshold (paper, adaptive) | all | percentile_entropy (code)
    query_threshold: float = 0.4  # theta_q, Eq. 4: uncertain FG pixels have M_c < 0.4
    query_percentile: float = 0.6  # percentile_entropy mode: "sure" rank (code PPC 0.6, AMN 0.4)
    query_entropy_quantile: float = 0.1  # percentile_entropy mode (code PPC 0.1, AMN 0.25)
    # -- NROIs and the BG memory bank (Sec. III-B2) -------------------------------------------
    n_clusters: int = 8  # K-means clusters per image (Table VIII, K = 8)
    kmeans_iters: int = 10  # Lloyd iterations of the batched K-means (code: sklearn on CPU)
    # VOC 50K, COCO 200K NROIs: the appendix says "50 K / 200 K" (main text "50, 200", read as
    # thousands); code 50,000 (PPC) / 100,000 (AMN). ``apply_preset`` shrinks it for the
    # synthetic benchmark (smoke, default, gpu).
    bank_size: int = 50_000
    n_negatives: int = 256  # negative keys per query, for both L_FB and L_IF (Sec. IV-A)
    # -- contrastive losses ------------------------------------------------------------------
    tau_fb: float = 0.5  # temperature of Eq. 7 (paper "0.5 and 0.1"; code 0.5)
    tau_if: float = 0.1  # temperature of Eq. 9 (paper; the code uses 0.5)
    # T_s of the class-graph softmax in active sampling. The paper's formula was lost in the
    # text extraction ("turn its relationships into a distribution by softmax"); the code
    # divides by 0.5. Decision: the code's 0.5 (nothing in the paper contradicts it).
    sampling_temperature: float = 0.5
    # Paper: L_FB trains the FG queries. The PPC code passes detached queries (so L_FB sends no
    # gradient) and the AMN code detaches the IF queries too. True reproduces the code.
    detach_fb_queries: bool = False
    detach_if_queries: bool = False
    # -- loss weights (Eq. 10; Table IX and appendix table, PPC/SEAM hosts) -------------------
    lambda_fb: float = 0.10  # paper (PPC code: 0.01; AMN: 0.05)
    lambda_if: float = 0.01  # paper (PPC code: 0.10; AMN appendix: 0.05)
    lambda_seg: float = 0.01  # paper appendix (PPC code: 0.1; AMN code: no L_seg)
    lambda_sim: float = 0.0  # code-only cos(z_fg, BG hidden) term, absent from the paper (code 0.1)
    seg_bg_threshold: float = 0.05  # Y_bg: summed normalised FG CAM below 0.05 (Sec. III-B2)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=True (code), skipped when the size already matches."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def gather_nrois(centres: Tensor, valid: Tensor) -> Tensor:
    """The valid NROIs of every rank, in rank order: [B, K, D], [B, K] -> [n, D].

    Every rank then enqueues the same rows, so the banks of all ranks stay identical.
    """
    if distributed.world_size() > 1:
        world = distributed.world_size()
        all_c = [torch.empty_like(centres) for _ in range(world)]
        all_v = [torch.empty_like(valid, dtype=torch.float32) for _ in range(world)]
        dist.all_gather(all_c, centres.contiguous())
        dist.all_gather(all_v, valid.float().contiguous())
        centres, valid = torch.cat(all_c), torch.cat(all_v) > 0.5
    return centres[valid]


def fbr_terms(
    out: dict[str, Tensor],
    labels: Tensor,
    bank: NROIBank,
    cfg: FBRConfig,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Unweighted FBR losses of one batch; updates the NROI bank first (as the code does).

    out: ``FBRNet.forward`` maps; labels [B, C] multi-hot. Returns "fb" (Eq. 7), "if" (Eq. 9),
    "bg_seg" (Eq. 6) and, when ``cfg.lambda_sim`` > 0, "sim".
    """
    cams, z_fg = out["cams"], out["z_fg"]
    b, c = cams.shape[:2]
    terms = {
        "bg_seg": bg_segmentation_loss(
            out["bg_logits"], background_target(cams.detach(), labels, cfg.seg_bg_threshold)
        )
    }
    if cfg.lambda_sim:
        terms["sim"] = fg_bg_similarity_loss(z_fg, out["bg_hidden"])

    size = (cfg.contrast_size,) * 2 if cfg.contrast_size > 0 else tuple(cams.shape[-2:])
    cams_c = _resize(cams.detach(), size)
    scores, pixel_labels = contrast_pseudo_labels(cams_c, labels, cfg.bg_score)
    p = size[0] * size[1]
    scores = scores.flatten(2)  # [B, C, P]
    pixel_labels = pixel_labels.flatten(1)  # [B, P]
    zf = _resize(z_fg, size).flatten(2).transpose(1, 2)  # [B, P, D]
    zb = _resize(out["z_bg"].detach(), size).flatten(2).transpose(1, 2)
    feats = zf.reshape(b * p, -1)
    pixel_class = pixel_labels.reshape(-1)

    # NROIs of this batch enter the bank before the loss (code: dequeue_and_enqueue first).
    centres, valid = batched_kmeans(zb, pixel_labels == c, cfg.n_clusters, cfg.kmeans_iters)
    bank.enqueue(F.normalize(gather_nrois(centres, valid), dim=1))

    rank_scores = scores if cfg.prototype_label_mask else normalized_cams(cams_c).flatten(2)
    protos = class_prototypes(
        feats.detach(),
        rank_scores.transpose(1, 2).reshape(b * p, c),
        p // cfg.prototype_topk_div,
    )
    query = select_queries(
        scores,
        pixel_labels,
        cfg.query_mode,
        cfg.query_threshold,
        cfg.query_percentile,
        cfg.query_entropy_quantile,
        cfg.bg_score,
    ).reshape(-1)
    qi = query.nonzero().squeeze(1)
    q_class = pixel_class[qi]
    in_batch = torch.bincount(pixel_class, minlength=c + 1)[:c] > 0
    n_cb = int(in_batch.sum())
    queries, positives = feats[qi], protos[q_class]
    # Keeps the FG head in the graph when the queries are detached or absent (DDP needs every
    # parameter to receive a gradient, even a zero one).
    anchor = feats.sum() * 0.0

    fb = anchor
    if len(bank) and qi.numel():
        q = queries.detach() if cfg.detach_fb_queries else queries
        index = bank.sample_index((qi.numel(), cfg.n_negatives), generator)
        fb = fb + prototype_contrast_loss(
            q, positives, bank.stored(), index, q_class, n_cb, cfg.tau_fb
        )
    terms["fb"] = fb

    neg = active_negative_index(
        protos, in_batch, q_class, pixel_class, cfg.n_negatives, cfg.sampling_temperature, generator
    )
    fg_if = anchor
    if neg is not None and qi.numel():
        q = queries.detach() if cfg.detach_if_queries else queries
        fg_if = fg_if + prototype_contrast_loss(
            q, positives, feats.detach(), neg, q_class, n_cb, cfg.tau_if
        )
    terms["if"] = fg_if
    return terms


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return getattr(model, "module", model)


class FBR(Method):
    name = "fbr"
    summary = "FBR (TCSVT'24): NROI fore-to-background + active intra-FG contrast on TAP CAM"
    Config = FBRConfig
    uses_saliency = False  # the "I" setting (SEAM/AMN hosts); the I+S PPC host is not built

    def build_model(self, backbone: nn.Module, num_classes: int) -> CamNet:
        cfg = self.config
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"fbr: unknown pooling {cfg.pooling!r}; choose one of {POOLINGS}")
        if cfg.query_mode not in QUERY_MODES:
            raise ValueError(f"fbr: unknown query_mode {cfg.query_mode!r}; one of {QUERY_MODES}")
        return FBRNet(
            backbone,
            num_classes,
            proj_dim=cfg.proj_dim,
            bank_size=cfg.bank_size,
            tap_threshold=cfg.tap_threshold if cfg.pooling == "tap" else None,
            bg_dropout=cfg.bg_dropout,
        )

    def losses(self, model: nn.Module, batch: dict, info: StepInfo) -> dict[str, Tensor]:
        cfg = self.config
        out = model(batch["image"])
        labels = batch["labels"]
        raw = fbr_terms(out, labels, _unwrap(model).bank, cfg)
        terms = {
            "cls": classification_loss(out["logits"], labels),
            "fb": cfg.lambda_fb * raw["fb"],
            "if": cfg.lambda_if * raw["if"],
            "bg_seg": cfg.lambda_seg * raw["bg_seg"],
        }
        if "sim" in raw:
            terms["sim"] = cfg.lambda_sim * raw["sim"]
        return terms

    def apply_preset(self, preset: str, run_config) -> None:
        m = run_config.method
        if preset == "smoke" or preset in BENCHMARK_PRESETS:
            # A few thousand NROIs for the synthetic benchmark's 320 (gpu: 1,200) training images,
            # 8 per image: the bank spans 1.6 epochs of default (0.4 of gpu) where VOC's 50K
            # spans 0.6.
            m.bank_size = 4096
        if preset in BENCHMARK_PRESETS:
            # The contrast labels' thresholds on normalised CAMs, moved with the benchmark's seed
            # threshold (0.15 -> 0.5, its band 0.4 / 0.6): the paper's 0.10 background score and
            # 0.4 query ceiling were set for sharp VOC CAMs, and here they label most of the
            # co-occurring context foreground. Measured (seed 0): 0.10 / 0.4 seeds 45.9, CRF
            # masks 66.4; 0.4 / 0.6 seeds 46.6, CRF masks 68.2, context called foreground
            # 48.8 -> 44.8 % (the baseline: 46.9, 62.6, 58.3 %).
            m.bg_score, m.query_threshold = 0.4, 0.6
            # The bias-free classifier reaches the label prior by pushing every map below zero
            # first; in 160 steps a seed that stays there two epochs leaves FBR's contrast
            # labels empty (seed 2: at the prior for two epochs, absent classes above present
            # ones on 61 % of images, seeds 28.8). The score bias (cls.score_bias, a per-class
            # bias on the pooled score at the label prior's log-odds, outside the CAMs) removes
            # that phase. Measured, three seeds (docs/benchmark.md): seeds 39.5 +- 9.4 -> 46.8
            # +- 1.9, CRF masks 50.5 +- 21.8 -> 64.2 +- 2.8, every seed healthy.
            run_config.cls.score_bias = True
            # With the bias the GT-assisted curve peaks above the shared 0.5 in every seed, FBR's
            # (0.62 / 0.61 / 0.61; seeds 48.6 / 47.1 / 44.9 at 0.5, 51.0 / 48.7 / 46.5 at the
            # best) as the baseline's with the bias (0.62 / 0.63 / 0.62): maps whose background
            # no longer has to sit below zero. Read off seed 0, rounded to 0.05, as the shared
            # threshold was read off the bias-free baseline's.
            set_bg_threshold(run_config, 0.6)
        if preset != "paper":
            return
        c = run_config.cls
        # PPC/SEAM host (spec 4.1), its stem frozen as in the PPC (EPS) code.
        c.backbone = BackboneConfig("resnet38d", 8, "none", True, freeze_stem=True)
        # PSA PolyOptimizer (appendix): lr 0.01, new layers x10, wd 5e-4, poly 0.9, and SGD
        # momentum = wd (PSA's slip, kept for parity). PSA's 2x/20x bias rates are not modelled.
        c.optim = OptimConfig(
            lr=0.01, head_lr_mult=10.0, weight_decay=5e-4, poly_power=0.9, legacy_psa_momentum=True
        )
        # Batch 8 (code; the paper says 9), crop 448 after a long-side resize in [448, 768].
        c.batch_size, c.crop, c.resize_long, c.color_jitter = 8, 448, (448, 768), 0.3
        # Code: 10,000 iterations x iter_size 2 = 20k SGD steps with a poly horizon of
        # (10582 // 8) * 15 = 19,830 steps = 15 epochs of train_aug at batch 8.
        c.epochs = 15
        m.bank_size = 50_000  # VOC (appendix)
        m.contrast_size = 16  # code: 56x56 ResNet-38 maps resized to 16x16
