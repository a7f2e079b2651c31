"""Self-contained checkpoints: weights plus everything needed to use them alone.

``classifier.pt`` and ``deeplab.pt`` hold the state dict, the method, the backbone settings, the
class names, the input normalisation, the whole run config and the code version, so export and
serving never need the run directory or this repository's defaults.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

import wsss
from wsss.config import BackboneConfig, ConfigError, RunConfig, from_dict, to_dict
from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.io import atomic_save
from wsss.models.backbones import build_backbone, locate_mobilenet_v2_imagenet
from wsss.models.deeplab import DeepLabV2
from wsss.models.frozen_bn import FrozenBatchNorm2d

log = logging.getLogger("wsss")

FORMAT_VERSION = 1
KINDS = ("classifier", "deeplab")
# State-dict key of a classifier trained with ``cls.score_bias`` (wsss.models.cam_net.ScoreBias).
SCORE_BIAS_KEY = "score_bias.bias"


class CheckpointError(ValueError):
    """A file that is not the checkpoint asked for; the message names it."""


def code_version() -> str:
    """The package version and, inside a git checkout, the commit."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(wsss.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{wsss.__version__}+{sha}" if sha else wsss.__version__


def resolve_pretrained(cfg: BackboneConfig) -> str | None:
    """The checkpoint path a backbone config asks for ("auto", "none" or a path)."""
    if cfg.pretrained == "none":
        return None
    if cfg.pretrained == "auto":
        found = locate_mobilenet_v2_imagenet() if cfg.name == "mobilenetv2" else None
        if found is None:
            log.warning("no bundled ImageNet weights for %s: random initialisation", cfg.name)
        return str(found) if found else None
    return cfg.pretrained


def make_backbone(cfg: BackboneConfig, load_pretrained: bool = True) -> nn.Module:
    """A backbone from its config; ``load_pretrained=False`` when a checkpoint supplies weights."""
    pretrained = resolve_pretrained(cfg) if load_pretrained else None
    frozen_bn = cfg.frozen_bn
    if load_pretrained and pretrained is None and frozen_bn:
        # Frozen statistics of a randomly initialised network are the identity: train BN instead.
        log.warning("backbone %s: no pretrained weights, so BatchNorm is trained", cfg.name)
        frozen_bn = False
    logger = logging.getLogger("wsss")
    level = logger.level
    if not load_pretrained:
        logger.setLevel(logging.ERROR)  # weights come from the checkpoint: no init warning
    try:
        backbone = build_backbone(
            cfg.name, output_stride=cfg.output_stride, pretrained=pretrained, frozen_bn=frozen_bn
        )
    finally:
        logger.setLevel(level)
    if load_pretrained:
        freeze_stem(backbone, cfg)
    return backbone


def freeze_stem(backbone: nn.Module, cfg: BackboneConfig) -> None:
    """Applies ``cfg.freeze_stem`` to a backbone about to be trained. Only a stem that holds
    ImageNet weights is frozen (its BN is frozen then, see :func:`make_backbone`); a random one
    is left trainable, with a warning."""
    if not cfg.freeze_stem:
        return
    if not hasattr(backbone, "freeze_stem"):
        raise ConfigError(f"backbone.freeze_stem applies to resnet38d only, not {cfg.name}")
    if not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()):
        log.warning("backbone %s: no ImageNet weights, so its stem is trained", cfg.name)
        return
    backbone.freeze_stem()


def save_checkpoint(
    path: Path, model: nn.Module, kind: str, cfg: RunConfig, class_names: tuple[str, ...]
) -> None:
    """Writes a self-contained checkpoint atomically; ``kind`` is classifier or deeplab."""
    stage = cfg.cls if kind == "classifier" else cfg.seg
    atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "method": cfg.method_name,
            "backbone": asdict(stage.backbone),
            "class_names": list(class_names),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "config": to_dict(cfg),
            "code_version": code_version(),
            "state_dict": model.state_dict(),
        },
        path,
    )


def read_checkpoint(path: str | Path, kind: str) -> dict:
    """Loads and checks a checkpoint file; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: not a wsss checkpoint (classifier.pt or deeplab.pt)")
    if data["kind"] != kind:
        raise CheckpointError(f"{path}: is a {data['kind']} checkpoint, expected a {kind}")
    return data


def load_classifier(path: str | Path) -> tuple[nn.Module, dict]:
    """(classification network in eval mode, checkpoint metadata) from ``classifier.pt``."""
    from wsss.methods import get_method, method_config

    data = read_checkpoint(path, "classifier")
    method_cls = get_method(data["method"])
    method_cfg = method_config(data["method"], data["config"].get("method"))
    backbone = make_backbone(from_dict(BackboneConfig, data["backbone"]), load_pretrained=False)
    model = method_cls(method_cfg).build_model(backbone, len(data["class_names"]) - 1)
    state = data.pop("state_dict")
    if SCORE_BIAS_KEY in state:  # trained with cls.score_bias
        model.enable_score_bias(torch.full_like(state[SCORE_BIAS_KEY], 0.5))
    model.load_state_dict(state)
    return model.eval(), data


def load_deeplab(path: str | Path) -> tuple[nn.Module, dict]:
    """(DeepLab network in eval mode, checkpoint metadata) from ``deeplab.pt``."""
    data = read_checkpoint(path, "deeplab")
    backbone = make_backbone(from_dict(BackboneConfig, data["backbone"]), load_pretrained=False)
    rates = tuple(data["config"]["seg"]["aspp_rates"])
    model = DeepLabV2(backbone, len(data["class_names"]), rates)
    model.load_state_dict(data.pop("state_dict"))
    return model.eval(), data
