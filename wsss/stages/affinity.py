"""Stages affinity and walk (``--refine affinity``): AffinityNet (Ahn and Kwak, CVPR 2018).

affinity: the la/ha CRF label maps of the training images -> ``affinity_labels/<id>.npz``
(``la``, ``ha`` uint8 [H, W] class ids); AffinityNet trained on them with the shared training
loop -> ``affinity_net.pt``.

walk: the CAMs of every train/seed image walked on the image's affinities ->
``affinity/<id>.npz`` (``keys`` int [K]; ``rw`` float16 [K+1, h, w], walked [bg; classes] on
the feature grid of the padded image; ``size`` (H, W); ``stride``), read back at image size
with :func:`load_walk_scores`; and the masks, argmax of the walked scores -> ``pseudo_rw/``.
With ``--refine affinity`` DeepLab trains on ``pseudo_rw/`` (``segment.mask_dir``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss import distributed
from wsss.cam import sweep_labels
from wsss.checkpoint import (
    CheckpointError,
    code_version,
    freeze_stem,
    load_classifier,
    make_backbone,
)
from wsss.config import AffinityConfig, BackboneConfig, ConfigError, crf_params, from_dict, to_dict
from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.data import transforms as T
from wsss.data.base import ImageSource
from wsss.data.loaders import image_to_tensor
from wsss.io import atomic_save, atomic_save_npz, load_label_png, save_label_png
from wsss.logs import progress
from wsss.metrics import SegmentationMeter
from wsss.models.affinity_net import AffinityNet
from wsss.models.normalize import Normalize
from wsss.refine.affinity import (
    affinity_loss,
    background_score,
    block_labels,
    combine_la_ha,
    crf_label_pair,
    pair_affinities,
    upsample_scores,
    walk_labels,
    walk_scores,
)
from wsss.stages.cams import load_cams
from wsss.stages.context import Context, run_per_image
from wsss.stages.pseudo import OUTPUT as PSEUDO
from wsss.trainer import train

OUTPUT = "affinity_net.pt"
LABELS = "affinity_labels"
SCORES = "affinity"
WALK_OUTPUT = "pseudo_rw"


def wanted(ctx: Context) -> bool:
    """Both stages run only with ``--refine affinity``."""
    return ctx.cfg.refine == "affinity"


# ---------------------------------------------------------------------------------------------
# Stage affinity


class AffinityDataset(Dataset):
    """Colour jitter, random crop and flip of an image and its la/ha labels (psa train_aff.py
    has no rescale); returns image float [3, S, S] and the affinity label map int64
    [ceil(S / stride)] ^ 2 (0 bg, k class, 255 ignore) on the network's feature grid."""

    def __init__(
        self,
        source: ImageSource,
        ids: list[str],
        label_dir: Path,
        crop: int,
        stride: int,
        num_labels: int,
        color_jitter: float = 0.0,
        hue_jitter: float = 0.0,
    ):
        self.source, self.ids, self.label_dir = source, ids, label_dir
        self.crop, self.stride, self.num_labels = crop, stride, num_labels
        self.color_jitter, self.hue_jitter = color_jitter, hue_jitter

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        sample = self.source.load(self.ids[index])
        with np.load(self.label_dir / f"{sample.name}.npz") as data:
            la, ha = data["la"], data["ha"]
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        image = T.color_jitter(sample.image, self.color_jitter, rng, self.hue_jitter)
        image, (la, ha) = _same_crop_and_flip(image, (la, ha), self.crop, rng)
        blocks = block_labels(torch.from_numpy(np.stack([la, ha])), self.stride, self.num_labels)
        return {
            "name": sample.name,
            "image": image_to_tensor(image),
            "label": combine_la_ha(blocks[0], blocks[1]).long(),
        }


def _same_crop_and_flip(
    image: np.ndarray, masks: tuple[np.ndarray, ...], crop: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One random crop and flip applied to an image and several label maps (padding 255).

    ``transforms`` handle one mask; each map reuses the same seeds, and since the draws depend
    only on the shapes, every map gets the image's crop offsets and flip.
    """
    crop_seed, flip_seed = (int(s) for s in rng.integers(0, 2**31 - 1, 2))
    out = []
    for mask in masks:
        cropped, mask = T.random_crop(image, mask, crop, np.random.default_rng(crop_seed))
        cropped, mask = T.random_hflip(cropped, mask, np.random.default_rng(flip_seed))
        out.append(mask)
    return cropped, out


def make_affinity_loss(cfg: AffinityConfig):
    """The trainer's loss function: the affinity loss of the network's pair affinities."""

    def loss(net, batch: dict, info) -> dict[str, torch.Tensor]:
        features = net(batch["image"])  # [B, D, h, w]
        labels = batch["label"]  # [B, h', w'], h' = h unless a backbone rounds differently
        if labels.shape[-2:] != features.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), features.shape[-2:], mode="nearest")
            labels = labels[:, 0].long()
        affinities = pair_affinities(features, cfg.radius)
        return affinity_loss(affinities, labels, cfg.radius, tuple(cfg.loss_weights))

    return loss


def build_affinity_net(ctx: Context) -> tuple[AffinityNet, BackboneConfig]:
    """AffinityNet on the classifier's trained backbone, or on a fresh ImageNet one."""
    a = ctx.cfg.affinity
    if a.init == "classifier":
        classifier, meta = load_classifier(ctx.path("classifier.pt"))
        backbone_cfg = from_dict(BackboneConfig, meta["backbone"])
        backbone, normalize = classifier.backbone, classifier.normalize
        freeze_stem(backbone, backbone_cfg)  # psa train_aff.py: the ImageNet stem stays fixed
    elif a.init == "imagenet":
        backbone_cfg = ctx.cfg.cls.backbone
        backbone = make_backbone(backbone_cfg)
        normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    else:
        raise ConfigError(f"affinity.init must be classifier or imagenet, got {a.init!r}")
    return AffinityNet(backbone, normalize, tuple(a.dims), a.out_dim), backbone_cfg


def save_affinity_net(path: Path, model: AffinityNet, backbone: BackboneConfig, ctx: Context):
    """A self-contained checkpoint: weights, backbone, head sizes, class names, run config."""
    atomic_save(
        {
            "format_version": 1,
            "kind": "affinity",
            "method": ctx.cfg.method_name,
            "backbone": asdict(backbone),
            "dims": list(ctx.cfg.affinity.dims),
            "out_dim": ctx.cfg.affinity.out_dim,
            "class_names": list(ctx.class_names),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "config": to_dict(ctx.cfg),
            "code_version": code_version(),
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_affinity_net(path: str | Path) -> tuple[AffinityNet, dict]:
    """(AffinityNet in eval mode, checkpoint metadata) from ``affinity_net.pt``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.get("kind") != "affinity":
        raise CheckpointError(f"{path}: not an AffinityNet checkpoint (affinity_net.pt)")
    backbone = make_backbone(from_dict(BackboneConfig, data["backbone"]), load_pretrained=False)
    normalize = Normalize(tuple(data["mean"]), tuple(data["std"]))
    model = AffinityNet(backbone, normalize, tuple(data["dims"]), data["out_dim"])
    model.load_state_dict(data.pop("state_dict"))
    return model.eval(), data


def make_labels(ctx: Context, ids: list[str]) -> None:
    """la/ha label maps of ``ids`` -> ``affinity_labels/<id>.npz``.

    ``labels="crf"``: the low/high-alpha CRFs of the CAMs (psa infer_cls.py). ``"pseudo"``: la =
    ha = the pseudo mask, which :func:`combine_la_ha` turns back into the mask itself.
    """
    a = ctx.cfg.affinity
    if a.labels not in ("crf", "pseudo"):
        raise ConfigError(f"affinity.labels must be crf or pseudo, got {a.labels!r}")
    crf = crf_params(a.crf_preset, ctx.cfg.crf)

    def work(image_id: str, folder: Path) -> None:
        if a.labels == "pseudo":
            mask = load_label_png(ctx.path(PSEUDO) / f"{image_id}.png")
            atomic_save_npz(folder / f"{image_id}.npz", la=mask, ha=mask)
            return
        keys, cams = load_cams(ctx.out, image_id)
        image = ctx.source.load(image_id).image
        la, ha = crf_label_pair(image, cams, keys, a.low_alpha, a.high_alpha, crf)
        atomic_save_npz(folder / f"{image_id}.npz", la=la, ha=ha)

    run_per_image(ctx, LABELS, ids, work)


def run(ctx: Context) -> dict:
    a = ctx.cfg.affinity
    ids = ctx.ids(ctx.cfg.data.train_split)
    make_labels(ctx, ids)
    torch.manual_seed(a.seed)  # the affinity head's initialisation belongs to the run's seed
    model, backbone_cfg = build_affinity_net(ctx)
    dataset = AffinityDataset(
        ctx.source,
        ids,
        ctx.path(LABELS),
        crop=a.crop,
        stride=model.stride,
        num_labels=len(ctx.class_names),
        color_jitter=a.color_jitter,
        hue_jitter=a.hue_jitter,
    )
    state = ctx.path(".affinity.state.pt")
    losses = train(
        model,
        dataset,
        make_affinity_loss(a),
        a.optim,
        epochs=a.epochs,
        batch_size=a.batch_size,
        device=ctx.device,
        state_path=state,
        seed=a.seed,
        workers=ctx.cfg.data.workers,
        desc="affinity",
    )
    if distributed.is_main():
        save_affinity_net(ctx.path(OUTPUT), model.cpu(), backbone_cfg, ctx)
        state.unlink(missing_ok=True)
    return {"final_losses": losses, "images": len(dataset)}


# ---------------------------------------------------------------------------------------------
# Stage walk


@torch.inference_mode()
def walk_image(
    model: AffinityNet,
    image: np.ndarray,
    cams: np.ndarray,
    cfg: AffinityConfig,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Walked [bg; classes] scores on the feature grid of one image (psa ``infer_aff.py``).

    image uint8 [H, W, 3]; cams float [K, H, W] normalised. The image is padded to a multiple
    of the stride s with the mean colour (zero after normalisation, as psa pads); the scores
    [(1 - max) ** rw_alpha; cams] are zero-padded and average-pooled to the grid, then walked.
    Returns float32 [K+1, ceil(H / s), ceil(W / s)] on the CPU.
    """
    s = model.stride
    h, w = image.shape[:2]
    hp, wp = math.ceil(h / s) * s, math.ceil(w / s) * s
    x = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).repeat(1, hp, wp)
    x[:, :h, :w] = image_to_tensor(image)
    features = model(x[None].to(device))[0]
    cams_t = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))
    scores = torch.cat([background_score(cams_t, cfg.rw_alpha), cams_t])
    scores = F.pad(scores, (0, wp - w, 0, hp - h))
    grid = F.adaptive_avg_pool2d(scores[None], features.shape[-2:])[0].to(device)
    return walk_scores(features, grid, cfg.rw_radius, cfg.beta, cfg.logt).float().cpu()


def load_walk_scores(run_dir: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys int [K], walked [bg; classes] scores float32 [K+1, H, W] at image size)."""
    with np.load(run_dir / SCORES / f"{image_id}.npz") as data:
        keys, grid = data["keys"], torch.from_numpy(data["rw"].astype(np.float32))
        stride, size = int(data["stride"]), tuple(int(v) for v in data["size"])
    return keys, upsample_scores(grid, stride, size).numpy()


def run_walk(ctx: Context) -> dict:
    a = ctx.cfg.affinity
    model, _ = load_affinity_net(ctx.path(OUTPUT))
    model.to(ctx.device)
    ids = ctx.union_ids(ctx.cfg.data.train_split, ctx.cfg.data.seed_split)
    crf = None if a.final_crf == "none" else crf_params(a.final_crf, ctx.cfg.crf)

    def walk(image_id: str, folder: Path) -> None:
        image = ctx.source.load(image_id).image
        keys, cams = load_cams(ctx.out, image_id)
        rw = walk_image(model, image, cams, a, ctx.device)
        atomic_save_npz(
            folder / f"{image_id}.npz",
            keys=keys,
            rw=rw.numpy().astype(np.float16),
            size=np.array(image.shape[:2]),
            stride=np.array(model.stride),
        )

    def mask(image_id: str, folder: Path) -> None:
        keys, scores = load_walk_scores(ctx.out, image_id)
        image = ctx.source.load(image_id).image if crf is not None else None
        save_label_png(walk_labels(scores, keys, image, crf), folder / f"{image_id}.png")

    run_per_image(ctx, SCORES, ids, walk)
    run_per_image(ctx, WALK_OUTPUT, ids, mask)
    return {"images": len(ids)}


# ---------------------------------------------------------------------------------------------
# Evaluation (called by stage eval)


def evaluate(ctx: Context, ids: list[str]) -> dict:
    """mIoU of the random-walk masks on ``ids`` (after ``final_crf``, as DeepLab sees them), and
    a GT-assisted background sweep of the bare walk.

    The sweep follows IRN ``make_sem_seg_labels``: the walked class scores divided by their
    maximum, a constant background score t, no CRF; the best t is chosen with the ground truth.
    """
    if not (wanted(ctx) and ctx.path(WALK_OUTPUT).exists() and ids):
        return {}
    names = ctx.class_names
    thresholds = np.round(np.arange(*ctx.cfg.cam.sweep), 4)
    written = SegmentationMeter(names)
    sweep = [SegmentationMeter(names) for _ in thresholds]
    for image_id in progress(ids, "eval affinity"):
        gt = ctx.source.load(image_id).mask
        written.update(gt, load_label_png(ctx.path(WALK_OUTPUT) / f"{image_id}.png"))
        keys, scores = load_walk_scores(ctx.out, image_id)
        fg = scores[1:] / max(float(scores[1:].max(initial=0.0)), 1e-5)
        for meter, (_, labels) in zip(sweep, sweep_labels(fg, keys, thresholds), strict=True):
            meter.update(gt, labels)
    best = int(np.argmax([m.miou() for m in sweep]))
    return {
        "pseudo_miou_affinity": written.summary()["miou"],
        "pseudo_miou_affinity_best_gt_assisted": sweep[best].summary()["miou"],
        "pseudo_affinity_best_bg_threshold_gt_assisted": float(thresholds[best]),
        "pseudo_miou_affinity_curve": {
            f"{t:.2f}": m.summary()["miou"] for t, m in zip(thresholds, sweep, strict=True)
        },
        "per_class": written.summary()["per_class"],
    }
