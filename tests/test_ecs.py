"""ECS-Net: erasing, reliable labels, Eq. 1/5/6/8 on hand-computed cases, and a smoke run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.checkpoint import load_classifier
from wsss.cli import build_config, build_parser, main
from wsss.methods.base import StepInfo
from wsss.methods.ecs import (
    ECS,
    ECSConfig,
    ECSNet,
    blur_params,
    ecs_classification_loss,
    erase_regions,
    erased_cam_ce_loss,
    gaussian_blur,
    normalized_cam,
    overlay_head,
    pcm_input,
    reliable_labels,
)


class TinyBackbone(nn.Module):
    """Three stride-2 convs: maps of 4, 6, 8 channels at strides 2, 4, 8."""

    def __init__(self):
        super().__init__()
        self.channels, self.out_channels = [4, 6, 8], 8
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, 3, 2, 1) for i, o in zip([3, 4, 6], self.channels, strict=True)
        )

    def forward(self, x):
        feats = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            feats.append(x)
        return feats


def tiny_net(**overrides) -> ECSNet:
    torch.manual_seed(0)
    cfg = ECSConfig(pcm_channels=(3, 5), pcm_embed=7, **overrides)
    return ECSNet(TinyBackbone(), 3, cfg)


def bce(o: float, y: float) -> float:
    """Eq. 4 for one class with the minus sign: -(y log sig(o) + (1 - y) log sig(-o))."""
    sig = 1 / (1 + math.exp(-o))
    return -(y * math.log(sig) + (1 - y) * math.log(1 - sig))


# ------------------------------------------------------------------------------- Eq. 1, erasing


def test_normalized_cam_is_label_masked_min_max():
    cams = torch.tensor([[[[1.0, 3.0], [-2.0, 5.0]], [[4.0, 0.0], [2.0, 1.0]]]])  # [1, 2, 2, 2]
    a = normalized_cam(cams, torch.tensor([[1.0, 0.0]]), (2, 2), eps=0.0)
    # ReLU first: class 0 is [[1, 3], [0, 5]] -> (x - 0) / 5; class 1 is absent -> exactly 0.
    torch.testing.assert_close(a[0, 0], torch.tensor([[0.2, 0.6], [0.0, 1.0]]))
    assert a[0, 1].eq(0).all()


def test_blur_params_scale_with_the_crop():
    assert blur_params(448, 41, 10.0, 448) == (41, 10.0)
    assert blur_params(224, 41, 10.0, 448) == (21, 5.0)
    k, _ = blur_params(64, 41, 10.0, 448)
    assert k == 5  # 41 * 64 / 448 = 5.9 -> nearest odd


def test_gaussian_blur_matches_kernel_and_keeps_constants():
    image = torch.zeros(1, 1, 7, 7)
    image[0, 0, 3, 3] = 1.0
    out = gaussian_blur(image, 3, 1.0)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2)
    g = g / g.sum()
    torch.testing.assert_close(out[0, 0, 2:5, 2:5], g[:, None] * g[None, :])
    const = torch.full((1, 3, 5, 6), 7.0)
    torch.testing.assert_close(gaussian_blur(const, 5, 2.0), const)
    assert torch.equal(gaussian_blur(image, 1, 1.0), image)


def test_erase_regions_blurs_exactly_the_region():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 6, 6) * 255
    region = torch.zeros(2, 6, 6, dtype=torch.bool)
    region[0, 1:3, 2:5] = True
    out = erase_regions(image, region, 3, 1.0)
    blurred = gaussian_blur(image, 3, 1.0)
    inside = region[:, None].expand_as(image)
    assert torch.equal(out[~inside], image[~inside])
    assert torch.equal(out[inside], blurred[inside])
    assert not torch.equal(out[inside], image[inside])


def test_pair_erases_where_the_score_map_exceeds_delta():
    net = tiny_net(beta=0.5, head_dropout=0.0).eval()
    image = torch.rand(2, 3, 32, 32) * 255
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = net.pair(image, labels)
    assert out["small"]["cams"].shape[-2:] == (2, 2)  # F: 16 px at stride 8
    assert out["erased"]["cams"].shape[-2:] == (4, 4)  # F': 32 px at stride 8
    s = normalized_cam(out["small"]["cams"], labels, (32, 32)).amax(1)  # Eq. 2
    assert torch.equal(out["region"], s > 0.6)
    assert not out["erased_image"].requires_grad and out["region"].dtype == torch.bool
    k, sigma = blur_params(32, 41, 10.0, 448)
    torch.testing.assert_close(out["erased_image"], erase_regions(image, s > 0.6, k, sigma))
    nothing = tiny_net(erase_threshold=1.0, head_dropout=0.0).eval().pair(image, labels)
    assert not nothing["region"].any() and torch.equal(nothing["erased_image"], image)
    everything = tiny_net(erase_threshold=-1.0, head_dropout=0.0).eval().pair(image, labels)
    assert everything["region"].all()
    torch.testing.assert_close(everything["erased_image"], gaussian_blur(image, k, sigma))


# ---------------------------------------------------------------------- reliable labels (Eq. 3)


def test_reliable_label_rule():
    # four pixels, two classes: (a_1, a_2) per pixel
    a = torch.tensor([[0.9, 0.2, 0.7, 0.3], [0.1, 0.85, 0.1, 0.2]]).view(1, 2, 1, 4)
    erased = torch.tensor([[[False, True, False, False]]])
    target = reliable_labels(a, erased, 0.8)
    # p0 kept (class 1); p1 erased (rule 1); p2 s' = 0.7 <= 0.8 (rule 3); p3 s' too low
    assert target.tolist() == [[[1, 255, 255, 255]]]
    assert reliable_labels(a, erased, 0.6).tolist() == [[[1, 255, 1, 255]]]
    assert reliable_labels(a, erased, 0.6, ignore_erased=False).tolist() == [[[1, 2, 1, 255]]]
    # theta < 0.5: p3 has s' = 0.3 > 0.2 but L' = bg (1 - 0.3 > 0.3): rule 2 drops it
    assert reliable_labels(a, erased, 0.2).tolist() == [[[1, 255, 1, 255]]]
    assert reliable_labels(a, erased, 0.2, ignore_background=False).tolist() == [[[1, 255, 1, 0]]]


# ----------------------------------------------------------------------- head, PCM, Eq. 5/6/8


def test_overlay_head_eq8():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    feature = torch.randn(1, 2, 9, 9)
    assert torch.equal(overlay_head(feature, conv, ()), conv(feature))
    h0 = conv(feature)
    h2 = F.conv2d(feature, conv.weight, padding=2, dilation=2)
    h3 = F.conv2d(feature, conv.weight, padding=3, dilation=3)
    torch.testing.assert_close(overlay_head(feature, conv, (2, 3)), 0.5 * h0 + (h2 + h3) / 4)
    const = torch.ones(1, 2, 20, 20)
    out = overlay_head(const, conv, (2, 3))
    torch.testing.assert_close(out[..., 8:12, 8:12], conv(const)[..., 8:12, 8:12])


def test_pcm_input_background_and_argmax():
    cams = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]])  # [1, 2, 1, 2]
    out = pcm_input(cams, eps=0.0)
    # max-normalised: class 0 [1, 0], class 1 [1/3, 1]; bg = 1 - max = [0, 0]
    torch.testing.assert_close(out[0, :, 0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_pcm_keeps_constant_maps():
    net = tiny_net()
    maps = torch.full((1, 4, 4, 4), 0.3)
    image = torch.randn(1, 3, 32, 32)
    feats = [torch.randn(1, 4, 16, 16), torch.randn(1, 6, 8, 8)]
    torch.testing.assert_close(net.pcm(maps, image, feats), maps, atol=1e-4, rtol=0)


def test_classification_loss_eq5():
    labels = torch.tensor([[1.0, 0.0]])
    o = [torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 0.5]])]
    o += [torch.tensor([[0.2, 0.1]]), torch.tensor([[1.0, 0.0]])]
    per = [(bce(x[0, 0].item(), 1) + bce(x[0, 1].item(), 0)) / 2 for x in o]
    expected = 0.5 * (per[0] + per[1]) + 0.5 * (per[2] + per[3])
    assert ecs_classification_loss(*o, labels).item() == pytest.approx(expected, rel=1e-5)
    # pro_weight scales the refined-map half only (0: no classification loss on E).
    without_e = 0.5 * (per[0] + per[1])
    assert ecs_classification_loss(*o, labels, 0.0).item() == pytest.approx(without_e, rel=1e-5)


def test_ce_loss_eq6_value_mask_and_empty_set():
    refined = torch.tensor([[0.2, 0.9], [0.5, 0.1], [0.3, 0.0]]).view(1, 3, 1, 2)
    refined.requires_grad_()
    target = torch.tensor([[[1, 255]]])
    expected = -torch.log_softmax(torch.tensor([0.2, 0.5, 0.3]), 0)[1]
    loss = erased_cam_ce_loss(refined, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert refined.grad[..., 1].eq(0).all() and refined.grad[..., 0].abs().sum() > 0
    scaled = erased_cam_ce_loss(refined, target, temperature=0.5)
    expected = -torch.log_softmax(torch.tensor([0.4, 1.0, 0.6]), 0)[1]
    assert scaled.item() == pytest.approx(expected.item(), rel=1e-6)
    empty = erased_cam_ce_loss(refined, torch.full((1, 1, 2), 255))
    assert empty.item() == 0.0 and empty.requires_grad
    # feature resolution: target [1, 2, 4] nearest-downsampled to the map's (1, 2)
    wide = torch.tensor([[[1, 1, 255, 255], [1, 1, 255, 255]]])
    at_grid = erased_cam_ce_loss(refined.detach(), wide, (1, 2))
    assert at_grid.item() == pytest.approx(loss.item(), rel=1e-6)


def test_ce_loss_reaches_only_the_refine_module():
    batch = {"image": torch.rand(2, 3, 32, 32) * 255, "labels": torch.tensor([[1.0, 0, 0]] * 2)}

    def grads(net):
        out = net(batch["image"], labels=batch["labels"])
        target = torch.ones(2, 32, 32, dtype=torch.long)  # every pixel reliable, class 1
        erased_cam_ce_loss(out["small"]["refined"], target).backward()
        assert not out["region"].requires_grad
        return {n: p.grad for n, p in net.named_parameters()}

    g = grads(tiny_net())
    assert all(g[n] is None for n in g if n.startswith(("backbone.", "classifier.")))
    assert g["pcm.embed.weight"].abs().sum() > 0
    g = grads(tiny_net(detach_refine_inputs=False))
    assert g["classifier.weight"] is not None and g["classifier.weight"].abs().sum() > 0


def test_losses_warmup_and_cam_contract():
    net = tiny_net(head_dropout=0.0).eval()
    method = ECS(net.cfg)
    batch = {"image": torch.rand(2, 3, 32, 32) * 255, "labels": torch.tensor([[1.0, 0, 1]] * 2)}
    late = method.losses(net, batch, StepInfo(0, 500, 1000))
    early = method.losses(net, batch, StepInfo(0, 0, 1000))
    assert set(late) == {"cls", "ce", "_cls", "_erased", "_reliable", "_score_drop"}
    assert all(torch.isfinite(v) for v in late.values())
    for key in ("cls", "ce"):
        assert early[key].item() == pytest.approx(0.2 * late[key].item(), rel=1e-5)
    # The health diagnostic: F's own classification loss, unscaled, detached.
    assert early["_cls"].item() == pytest.approx(late["_cls"].item(), rel=1e-6)
    assert not late["_cls"].requires_grad
    cams = net.cam(batch["image"])
    assert cams.shape == (2, 3, 4, 4) and cams.min() >= 0
    assert net(batch["image"])["logits"].shape == (2, 3)
    assert {id(m) for m in net.new_modules()} == {id(net.classifier), id(net.pcm)}


def test_paper_preset():
    cfg = build_config(build_parser().parse_args(["ecs", "--preset", "paper", "--root", "x"]))
    assert cfg.cls.optim.lr == 0.05 and cfg.cls.optim.legacy_psa_momentum
    assert (cfg.cls.epochs, cfg.cls.batch_size, cfg.cls.crop) == (8, 8, 448)
    assert cfg.cls.resize_long == (448, 768) and cfg.cls.backbone.name == "resnet38d"
    assert cfg.method.warmup_steps == 100 and cfg.method.dilations == (5, 7, 12)
    assert cfg.method.infer_map == "refined"  # SEAM's PCM-refined E on VOC
    default = build_config(build_parser().parse_args(["ecs"]))
    assert default.method.warmup_steps == 0 and default.method.infer_map == "cam"


# ------------------------------------------------------------------------------------ smoke run


def test_smoke_end_to_end(tmp_path, cache_dir):
    out = tmp_path / "ecs"
    assert main(["ecs", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ecs" and report["supervision"] == "I"
    assert {"seed_miou", "pseudo_miou", "seg_miou"} <= report.keys()
    assert (out / "classifier.pt").exists() and (out / "deeplab.pt").exists()
    model, meta = load_classifier(out / "classifier.pt")
    assert isinstance(model, ECSNet) and meta["method"] == "ecs"
    cams = model.cam(torch.rand(1, 3, 64, 64) * 255)
    assert cams.shape[1] == len(meta["class_names"]) - 1


def test_erasing_diagnostics_on_a_hand_case():
    from wsss.constants import IGNORE_INDEX
    from wsss.methods.ecs import erasing_diagnostics

    logits = torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    erased = torch.tensor([[1.0, 5.0], [0.5, 2.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # present: (0, 0) drops 1, (1, 1) drops 1
    region = torch.tensor([[[True, False], [False, False]], [[True, True], [False, False]]])
    target = torch.full((2, 2, 2), IGNORE_INDEX)
    target[0, 1, 1] = 1
    d = erasing_diagnostics(logits, erased, labels, region, target)
    assert d["_erased"].item() == pytest.approx(3 / 8)
    assert d["_reliable"].item() == pytest.approx(1 / 8)
    assert d["_score_drop"].item() == pytest.approx(1.0)  # the absent class's +4 is not counted
