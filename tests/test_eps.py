"""EPS: overlap split (Eq. 2), estimated saliency (Eq. 1), Eq. 3/4 values, and a smoke run."""

import json
import math

import pytest
import torch
from torch import nn

from wsss.checkpoint import load_classifier
from wsss.cli import build_config, build_parser, main
from wsss.methods.base import StepInfo
from wsss.methods.eps import (
    EPS,
    EPSConfig,
    EPSNet,
    estimated_saliency,
    link_saliency,
    overlap_ratio,
    saliency_loss,
    split_maps,
)


class TinyBackbone(nn.Module):
    channels, out_channels = [8], 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)

    def forward(self, x):
        return [torch.relu(self.conv(x))]


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def two_pixel_logits() -> torch.Tensor:
    """C = 1 on a 1 x 2 map: class logits [2, -2], background (last) [0, 0]."""
    return torch.tensor([[[[2.0, -2.0]], [[0.0, 0.0]]]])


def test_overlap_ratio_binarises_strictly_and_is_detached():
    probs = torch.tensor([[[[0.9, 0.6], [0.5, 0.1]], [[0.5, 0.2], [0.0, 0.4]]]])  # [1, 2, 2, 2]
    probs.requires_grad_()
    saliency = torch.tensor([[[[0.7, 0.2], [0.9, 0.5]]]])
    o = overlap_ratio(probs, saliency, 0.5, eps=0.0)
    # class 0: B = {(0,0), (0,1)}, saliency B = {(0,0), (1,0)} -> 1/2; 0.5 is not > 0.5.
    # class 1: no pixel above 0.5 -> 0 (with the code's eps; 0/0 without it)
    assert o[0, 0].item() == pytest.approx(0.5)
    assert overlap_ratio(probs, saliency)[0, 1].item() == 0.0
    assert not o.requires_grad
    # The authors' form adds eps once per pixel of the 2 x 2 map: 1 / (2 + 4 * 0.25).
    per_pixel = overlap_ratio(probs, saliency, 0.5, eps=0.25, eps_per_pixel=True)
    assert per_pixel[0, 0].item() == pytest.approx(1 / 3)
    assert overlap_ratio(probs, saliency, 0.5, eps=0.25)[0, 0].item() == pytest.approx(1 / 2.25)


def test_split_maps_by_overlap_and_labels():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)  # C = 3, background last
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    fg, bg = split_maps(probs, labels, torch.tensor([[True, False, True]]))
    # class 0 (labelled, overlaps) -> fg; class 1 (labelled, no overlap) -> bg with M_{C+1};
    # class 2 is absent -> in neither map
    assert fg.item() == pytest.approx(0.1)
    assert bg.item() == pytest.approx(0.2 + 0.4)
    fg, bg = split_maps(probs, labels, torch.tensor([[False, False, False]]))
    assert fg.item() == 0.0 and bg.item() == pytest.approx(0.1 + 0.2 + 0.4)


def test_estimated_saliency_identity():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 3, 3), dim=1)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    chosen = torch.tensor([[True, True, False], [True, False, False]])
    fg, bg = split_maps(probs, labels, chosen)
    other = (probs[:, :3] * (1 - labels)[:, :, None, None]).sum(1, keepdim=True)
    for lam in (0.0, 0.5, 0.8):
        # softmax sums to 1, so Eq. 1 = M_fg + (1 - lam) M_other
        torch.testing.assert_close(estimated_saliency(fg, bg, lam), fg + (1 - lam) * other)
    assert estimated_saliency(torch.tensor(0.6), torch.tensor(0.3), 0.5).item() == pytest.approx(
        0.5 * 0.6 + 0.5 * 0.7
    )


def test_saliency_loss_eq3_hand_values():
    logits, labels = two_pixel_logits(), torch.tensor([[1.0]])
    saliency = torch.tensor([[[[1.0, 0.0]]]])
    # overlap 1 > tau: M_fg = p, M_bg = 1 - p, M^_s = p -> mean of (1 - s(2))^2, s(-2)^2
    loss = saliency_loss(logits, saliency, labels, tau=0.4, lam=0.5)
    assert loss.item() == pytest.approx(sig(-2) ** 2, rel=1e-5)
    # tau = 1: the class joins the background: M_fg = 0, M_bg = 1 -> M^_s = 0 -> (1 + 0) / 2
    assert saliency_loss(logits, saliency, labels, tau=1.0).item() == pytest.approx(0.5)
    # absent class: M_fg = 0, M_bg = background = 1 - p -> M^_s = p / 2
    absent = saliency_loss(logits, saliency, torch.tensor([[0.0]]))
    expected = ((1 - sig(2) / 2) ** 2 + (sig(-2) / 2) ** 2) / 2
    assert absent.item() == pytest.approx(expected, rel=1e-5)
    # logits resolution: a [2, 4] saliency is nearest-downsampled to columns 0 and 2
    big = torch.tensor([[[[1.0, 0.2, 0.0, 0.9], [0.3, 0.3, 0.3, 0.3]]]])
    assert saliency_loss(logits, big, labels).item() == pytest.approx(loss.item(), rel=1e-6)


def test_saliency_loss_zero_when_maps_match_and_gradients():
    logits = torch.zeros(1, 3, 4, 4)  # C = 2, background last
    square = torch.zeros(4, 4)
    square[:2, :2] = 1
    logits[0, 0] = 20 * square
    logits[0, 2] = 20 * (1 - square)
    logits.requires_grad_()
    saliency = square.view(1, 1, 4, 4).clone().requires_grad_()
    loss = saliency_loss(logits, saliency, torch.tensor([[1.0, 0.0]]))
    assert loss.item() < 1e-12
    loss.backward()
    assert logits.grad.abs().max() < 1e-6 and saliency.grad is None
    # a non-matching case: gradient reaches every channel's logits through the softmax
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    saliency_loss(logits, saliency.detach(), torch.tensor([[1.0, 1.0]])).backward()
    assert (logits.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_losses_eq4_and_network_contract():
    method = EPS(EPSConfig())
    stub = lambda image: {  # noqa: E731
        "logits": torch.tensor([[2.0, -1.0]]),
        "cams_all": torch.zeros(1, 3, 2, 2),
    }
    batch = {
        "image": torch.zeros(1, 3, 8, 8),
        "labels": torch.tensor([[1.0, 0.0]]),
        "saliency": torch.zeros(1, 1, 8, 8),
    }
    terms = method.losses(stub, batch, StepInfo(0, 0, 1))
    expected = (-math.log(sig(2)) - math.log(1 - sig(-1))) / 2  # Eq. 4
    assert terms["cls"].item() == pytest.approx(expected, rel=1e-6)
    # O = 0 (no salient pixel): M_fg = 0, M_bg = 2/3, M^_s = 0.5 (1 - 2/3) = 1/6
    assert terms["sal"].item() == pytest.approx((1 / 6) ** 2, rel=1e-5)

    torch.manual_seed(0)
    net = EPSNet(TinyBackbone(), 2)
    assert method.uses_saliency and net.classifier.out_channels == 3
    x = torch.rand(2, 3, 16, 16) * 255
    out = net(x)
    assert out["logits"].shape == (2, 2) and out["cams_all"].shape == (2, 3, 4, 4)
    torch.testing.assert_close(out["cams"], out["cams_all"][:, :2])
    torch.testing.assert_close(net.cam(x), torch.softmax(out["cams_all"], 1)[:, :2])
    assert net.cam(x).sum(1).max() < 1  # the background (last channel) takes the rest


def test_bg_margin_read_out_is_each_class_against_the_background():
    torch.manual_seed(0)
    net = EPSNet(TinyBackbone(), 2, cam_mode="bg_margin")
    x = torch.rand(1, 3, 16, 16) * 255
    maps = net(x)["cams_all"]
    probs = torch.softmax(maps, 1)
    expected = probs[:, :2] / (probs[:, :2] + probs[:, 2:])  # p_c / (p_c + p_bg)
    torch.testing.assert_close(net.cam(x), expected)
    with pytest.raises(ValueError, match="bg_margin"):
        EPSNet(TinyBackbone(), 2, cam_mode="other").cam(x)


def test_warmup_trains_the_classification_loss_alone():
    method = EPS(EPSConfig(warmup_fraction=0.25))
    stub = lambda image: {  # noqa: E731
        "logits": torch.tensor([[2.0, -1.0]]),
        "cams_all": torch.zeros(1, 3, 2, 2),
    }
    batch = {
        "image": torch.zeros(1, 3, 8, 8),
        "labels": torch.tensor([[1.0, 0.0]]),
        "saliency": torch.zeros(1, 1, 8, 8),
    }
    assert method.losses(stub, batch, StepInfo(0, 2, 10))["sal"].item() == 0.0
    after = method.losses(stub, batch, StepInfo(0, 3, 10))["sal"].item()
    assert after == pytest.approx((1 / 6) ** 2, rel=1e-5)


def test_link_saliency(tmp_path):
    maps = tmp_path / "pfan"
    maps.mkdir()
    for name in ("a", "b"):
        (maps / f"{name}.png").write_bytes(b"png")
    root = tmp_path / "voc"
    assert link_saliency(maps, root) == 2
    assert (root / "Saliency" / "a.png").read_bytes() == b"png"
    assert link_saliency(maps, root) == 0
    with pytest.raises(FileNotFoundError):
        link_saliency(tmp_path / "missing", root)


def test_paper_preset():
    cfg = build_config(build_parser().parse_args(["eps", "--preset", "paper", "--root", "x"]))
    assert cfg.cls.optim.lr == 0.01 and cfg.cls.optim.head_lr_mult == 10.0
    assert (cfg.cls.batch_size, cfg.cls.crop, cfg.cls.resize_long) == (8, 448, (256, 512))
    assert cfg.cls.epochs == 15 and cfg.cam.bg_threshold == 0.20
    assert cfg.method.tau == 0.4 and cfg.method.lam == 0.5


def test_smoke_end_to_end(tmp_path, cache_dir):
    out = tmp_path / "eps"
    assert main(["eps", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "eps" and report["supervision"] == "I+S"
    assert {"seed_miou", "pseudo_miou", "seg_miou"} <= report.keys()
    assert (out / "classifier.pt").exists() and (out / "deeplab.pt").exists()
    model, meta = load_classifier(out / "classifier.pt")
    n_fg = len(meta["class_names"]) - 1
    assert isinstance(model, EPSNet) and model.classifier.out_channels == n_fg + 1
    assert model.cam(torch.rand(1, 3, 64, 64) * 255).shape[1] == n_fg


def test_foreground_maps_read_modes_on_a_hand_case():
    from wsss.methods.eps import foreground_maps

    maps = torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1, 1)  # two classes, background last
    soft = torch.softmax(torch.tensor([1.0, 0.0, 2.0]), dim=0)[:2]
    assert torch.allclose(foreground_maps(maps, "softmax").flatten(), soft)
    assert torch.equal(foreground_maps(maps, "relu").flatten(), torch.tensor([1.0, 0.0]))
    margin = torch.sigmoid(torch.tensor([-1.0, -2.0]))
    assert torch.allclose(foreground_maps(maps, "bg_margin").flatten(), margin)
    with pytest.raises(ValueError):
        foreground_maps(maps, "max")
