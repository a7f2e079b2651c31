"""CPN: CP-pair generator, PCM/PRCM, each loss on a hand-computed case, and a smoke run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.checkpoint import load_classifier
from wsss.cli import build_config, build_parser, main
from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.methods import get_method
from wsss.methods.base import StepInfo
from wsss.methods.cpn import (
    CPN,
    CPNConfig,
    CPNNet,
    classification_triplet_loss,
    cpcr_loss,
    max_onehot,
    min_pool_loss,
    normalize_maps,
    ohem_mean,
    superpixel_count,
    tcp_loss,
    with_background,
)
from wsss.methods.cpn_patches import (
    complementary_pair,
    grid_partition,
    make_cp_pair,
    random_visibility,
    superpixel_partition,
    visible_fraction,
)
from wsss.models.backbones import Backbone
from wsss.models.normalize import Normalize
from wsss.models.pcm import (
    PCM,
    PRCM,
    CorrelationFeatures,
    cosine_affinity,
    propagate,
    seam_normalize_cam,
)
from wsss.trainer import total_loss

EPS = 1e-5
MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)


class TinyBackbone(Backbone):
    """Three conv stages at stride 4, 4, 4: channels [6, 8, 10] (enough for PCM's [-3], [-2])."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.mid = nn.Conv2d(6, 8, 3, padding=1)
        self.deep = nn.Conv2d(8, 10, 3, padding=1)
        self.channels, self.strides, self.output_stride = [6, 8, 10], [4, 4, 4], 4

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.relu(self.mid(a))
        return [a, b, torch.relu(self.deep(b))]


def tiny_net(**overrides) -> CPNNet:
    torch.manual_seed(0)
    return CPNNet(TinyBackbone(), 3, CPNConfig(**overrides))


# ---------------------------------------------------------------------------------------------
# CP pairs


def test_grid_partition_ids_and_counts():
    parts, counts = grid_partition(torch.tensor([2, 3]), 4, 5)
    assert parts.shape == (2, 4, 5) and counts.tolist() == [6, 4]
    assert parts[0].tolist() == [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5], [3, 3, 4, 4, 5]]
    assert parts[1].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 3, 3]]


def test_visibility_is_constant_per_patch_and_respects_probability():
    parts, counts = grid_partition(torch.tensor([2, 4]), 8, 8)
    torch.manual_seed(0)
    visible, hidden = random_visibility(parts, counts, 0.5)
    assert visible.dtype == torch.bool and visible.shape == (2, 8, 8)
    for b in range(2):  # one value per patch; hidden count matches the mask
        ids = parts[b].flatten()
        v = visible[b].flatten().long()
        low = torch.zeros(int(counts[b]), dtype=torch.long).scatter_reduce(
            0, ids, v, "amin", include_self=False
        )
        high = torch.zeros(int(counts[b]), dtype=torch.long).scatter_reduce(
            0, ids, v, "amax", include_self=False
        )
        assert torch.equal(low, high) and int((low == 0).sum()) == int(hidden[b])
    all_vis, none_hidden = random_visibility(parts, counts, 0.0)
    assert bool(all_vis.all()) and none_hidden.tolist() == [0, 0]
    no_vis, all_hidden = random_visibility(parts, counts, 1.0)
    assert not bool(no_vis.any()) and all_hidden.tolist() == counts.tolist()


def test_visible_fraction_pixels_versus_patches():
    # Two patches of 5 and 1 pixels; the 1-pixel patch is hidden.
    visible = torch.tensor([[[True, True, True], [True, True, False]]])
    counts, hidden = torch.tensor([2]), torch.tensor([1])
    assert visible_fraction(visible, counts, hidden, "pixels").item() == pytest.approx(5 / 6)
    assert visible_fraction(visible, counts, hidden, "patches").item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        visible_fraction(visible, counts, hidden, "area")


def test_complementary_pair_sums_to_image_bit_exactly():
    torch.manual_seed(1)
    images = torch.rand(3, 3, 16, 16) * 255
    visible = torch.rand(3, 16, 16) < 0.5
    # fill 0: I_h + I_h' = I exactly, each pixel in exactly one of them.
    h, hb = complementary_pair(images, visible, torch.zeros(3))
    assert torch.equal(h + hb, images)
    assert torch.equal(h == images, visible[:, None].expand_as(images) | (images == 0))
    assert torch.equal((h != 0) & (hb != 0), torch.zeros_like(h, dtype=torch.bool))
    # fill = the network's mean: the identity holds in the normalised input space.
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    h, hb = complementary_pair(images, visible, norm.mean.view(3))
    assert torch.equal(norm(h) + norm(hb), norm(images))
    assert torch.equal(
        norm(h)[~visible[:, None].expand_as(h)], torch.zeros(int((~visible).sum()) * 3)
    )


@pytest.mark.parametrize("strategy", ["grid", "superpixel"])
def test_make_cp_pair_is_complementary_with_visible_fraction(strategy):
    torch.manual_seed(2)
    # Blocky colour image so SLIC finds real segments.
    images = F.interpolate(torch.rand(4, 3, 4, 4) * 255, (32, 32), mode="nearest")
    pair = make_cp_pair(images, MEAN, strategy=strategy, n_segments=16, hide_prob=0.5)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(norm(pair.hidden) + norm(pair.complement), norm(images))
    vis = pair.visible[:, None].expand_as(images)
    assert torch.equal(pair.hidden[vis], images[vis])
    assert torch.equal(pair.complement[~vis], images[~vis])
    torch.testing.assert_close(pair.lam, pair.visible.flatten(1).float().mean(1))


def test_superpixel_partition_ids_are_contiguous():
    torch.manual_seed(3)
    images = F.interpolate(torch.rand(2, 3, 4, 4) * 255, (32, 32), mode="nearest")
    parts, counts = superpixel_partition(images, n_segments=16)
    assert parts.shape == (2, 32, 32) and parts.dtype == torch.long
    for b in range(2):
        assert torch.equal(parts[b].unique(), torch.arange(int(counts[b])))
        assert counts[b] > 1


def test_grid_lambda_has_mean_one_half():
    torch.manual_seed(4)
    pair = make_cp_pair(torch.rand(400, 3, 32, 32) * 255, MEAN, strategy="grid", hide_prob=0.5)
    assert abs(pair.lam.mean().item() - 0.5) < 0.03
    with pytest.raises(ValueError):
        make_cp_pair(torch.rand(1, 3, 8, 8), MEAN, strategy="random")


# ---------------------------------------------------------------------------------------------
# PCM / PRCM


def test_seam_normalize_cam_hand_case():
    # 2 fg classes over 3 pixels (h=1, w=3).
    cams = torch.tensor([[[[2.0, 0.0, -1.0]], [[1.0, 3.0, 0.0]]]], requires_grad=True)
    out = seam_normalize_cam(cams)
    fg0 = torch.tensor([2 - EPS, 0, 0]) / (2 + EPS)
    fg1 = torch.tensor([1 - EPS, 3 - EPS, 0]) / (3 + EPS)
    best = torch.maximum(fg0, fg1)
    expected = torch.stack(
        [1 - best, torch.where(fg0 < best, 0, fg0), torch.where(fg1 < best, 0, fg1)]
    )
    torch.testing.assert_close(out[0, :, 0], expected)
    assert out[0, 2, 0, 0] == 0 and out[0, 1, 0, 1] == 0  # only the arg-max class survives
    assert not out.requires_grad  # detached: gradient blocking


def test_cosine_affinity_and_propagation_hand_case():
    # Pixels 0 and 1 share a direction, pixel 2 is orthogonal, pixel 3 opposite to pixel 0.
    emb = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]]).view(1, 2, 1, 4)
    aff = cosine_affinity(emb)
    n = torch.tensor([1.0, 2.0, 3.0, 1.0]) + EPS
    cos = torch.tensor([[1, 2, 0, -1], [2, 4, 0, -2], [0, 0, 9, 0], [-1, -2, 0, 1]]) / (
        n[:, None] * n
    )
    torch.testing.assert_close(aff[0], cos.clamp(min=0))
    cam = torch.tensor([[1.0, 3.0, 5.0, 7.0]]).view(1, 1, 1, 4)
    out = propagate(cam, aff)
    weights = aff[0] / (aff[0].sum(0, keepdim=True) + EPS)  # column-normalised: per target pixel
    expected = cam.view(1, 4) @ weights
    torch.testing.assert_close(out.view(1, 4), expected)
    # Pixels 0/1 average each other (cosine 1), 2 and 3 keep their own value.
    torch.testing.assert_close(out.view(4)[:2], torch.tensor([2.0, 2.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.view(4)[2:], torch.tensor([5.0, 7.0]), atol=1e-3, rtol=0)


def test_pcm_with_orthogonal_features_is_identity():
    pcm = PCM(4, 4)
    with torch.no_grad():
        pcm.embed.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    x = torch.eye(4).view(1, 4, 2, 2)  # one-hot feature per pixel
    cam = torch.rand(1, 3, 2, 2)
    torch.testing.assert_close(pcm(cam, x), cam, atol=1e-4, rtol=0)


def reference_prcm(prcm: PRCM, cam, x, gx):
    """Eq. 11-12 written with explicit axes (einsum), K = classes, n = pixels, c = C1, d = D."""
    b, k, h, w = cam.shape
    z = torch.einsum("bkn,bcn->bkc", F.softmax(cam.flatten(2), -1), x.flatten(2))
    key = F.relu(torch.einsum("dc,bkc->bkd", prcm.phi.weight[:, :, 0, 0], z))
    rel = torch.einsum("bkd,bdn->bkn", key, F.relu(gx).flatten(2)) / math.sqrt(k)
    return cam * F.softmax(rel, -1).view(b, k, h, w)


def test_prcm_axes_match_the_equations():
    torch.manual_seed(5)
    prcm = PRCM(5, 6)
    cam, x, gx = torch.rand(2, 4, 3, 3), torch.randn(2, 5, 3, 3), torch.randn(2, 6, 3, 3)
    out = prcm(cam, x, gx)
    assert out.shape == cam.shape
    torch.testing.assert_close(out, reference_prcm(prcm, cam, x, gx))
    # Z: a class peaked at one pixel gathers that pixel's features; a flat class the mean.
    peaked = torch.zeros(1, 2, 3, 3)
    peaked[0, 0, 1, 2] = 60.0
    z = prcm.region_descriptors(peaked, x[:1])
    torch.testing.assert_close(z[0, 0], x[0, :, 1, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(z[0, 1], x[0].flatten(1).mean(1))
    # SoftMax(P_R) is over pixels: with Y = 1 every class map sums to 1.
    ones = prcm(torch.ones(2, 4, 3, 3), x, gx)
    torch.testing.assert_close(ones.sum((2, 3)), torch.ones(2, 4))


def test_prcm_is_class_equivariant_and_legacy_view_is_not():
    torch.manual_seed(6)
    fixed, legacy = PRCM(5, 6), PRCM(5, 6, legacy_view=True)
    legacy.load_state_dict(fixed.state_dict())
    cam, x, gx = torch.rand(1, 4, 3, 3), torch.randn(1, 5, 3, 3), torch.randn(1, 6, 3, 3)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(fixed(cam[:, perm], x, gx), fixed(cam, x, gx)[:, perm])
    assert not torch.allclose(legacy(cam[:, perm], x, gx), legacy(cam, x, gx)[:, perm])
    z = torch.randn(1, 4, 5)
    torch.testing.assert_close(legacy.keys(z), fixed.keys(z).transpose(1, 2).reshape(1, 4, 6))


def test_correlation_features_detach_the_backbone():
    feats = CorrelationFeatures(8, 10, (2, 3))
    image = torch.rand(1, 3, 16, 16)
    mid = torch.rand(1, 8, 4, 4, requires_grad=True)
    deep = torch.rand(1, 10, 2, 2, requires_grad=True)
    out = feats(image, mid, deep, (4, 4))
    assert out.shape == (1, 3 + 2 + 3, 4, 4) and feats.out_channels == 8
    torch.testing.assert_close(
        out[:, :3], F.interpolate(image, (4, 4), mode="bilinear", align_corners=True)
    )
    out.sum().backward()
    assert mid.grad is None and deep.grad is None
    assert feats.reduce_mid.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# Network contract and gradient blocking


def test_cpn_net_contract_shapes():
    net = tiny_net()
    x = torch.rand(2, 3, 32, 32) * 255
    out = net(x)
    assert out["logits"].shape == (2, 3) and out["cams"].shape == (2, 3, 8, 8)
    assert out["refined"].shape == (2, 4, 8, 8)
    net.eval()
    cam = net.cam(x)
    assert cam.shape == (2, 3, 8, 8) and bool((cam >= 0).all())
    torch.testing.assert_close(cam, torch.relu(net(x)["refined"][:, 1:]))
    assert net.prcm in net.new_modules() and net.pcm in net.new_modules()
    assert tiny_net(use_prcm=False).prcm is None


def test_refined_cam_trains_only_the_correlation_layers():
    net = tiny_net()
    out = net(torch.rand(2, 3, 32, 32) * 255)
    out["refined"].sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.classifier.weight.grad is None
    for module in (net.correlation, net.pcm, net.prcm):
        assert all(p.grad is not None for p in module.parameters())
    net.zero_grad(set_to_none=True)
    net(torch.rand(2, 3, 32, 32) * 255)["logits"].sum().backward()
    assert net.classifier.weight.grad is not None
    assert all(p.grad is None for p in net.pcm.parameters())


# ---------------------------------------------------------------------------------------------
# Losses


def test_normalize_maps_minmax_and_max():
    cams = torch.tensor([[[[-1.0, 1.0, 3.0]]]])
    minmax = torch.tensor([0.0, (1 - EPS) / (3 + EPS), (3 - EPS) / (3 + EPS)])
    torch.testing.assert_close(normalize_maps(cams, "minmax")[0, 0, 0], minmax)
    shifted = torch.tensor([[[[2.0, 4.0, 6.0]]]])  # min 2 is subtracted
    expected = torch.tensor([0.0, (2 - EPS) / (4 + EPS), (4 - EPS) / (4 + EPS)])
    torch.testing.assert_close(normalize_maps(shifted, "minmax")[0, 0, 0], expected)
    torch.testing.assert_close(
        normalize_maps(cams, "max")[0, 0, 0], torch.tensor([0, 1, 3]) / (3 + EPS)
    )
    with pytest.raises(ValueError):
        normalize_maps(cams, "softmax")


def test_with_background_eq16():
    fg = torch.tensor([[[[0.2, 0.5]], [[0.7, 0.1]]]])
    out = with_background(fg)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.3, 0.5]))
    torch.testing.assert_close(out[:, 1:], fg)
    torch.testing.assert_close(with_background(fg, 2.0)[0, 0, 0], torch.tensor([0.09, 0.25]))


def test_max_onehot_keeps_one_channel_with_its_value():
    x = torch.tensor([[[[1.0, -1.0]], [[3.0, -2.0]], [[2.0, -3.0]]]])
    out = max_onehot(x)
    assert out[0, :, 0, 0].tolist() == [0.0, 3.0, 0.0]
    assert out[0, :, 0, 1].tolist() == [-1.0, 0.0, 0.0]
    x = torch.randn(2, 5, 4, 4)
    assert ((max_onehot(x) != 0).sum(1) == 1).all()


def test_ohem_mean_top_fraction_per_image():
    errors = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 10.0, 0.0, 2.0]])
    assert ohem_mean(errors, 0.4).item() == pytest.approx((4 + 5 + 10 + 2) / 4)
    assert ohem_mean(errors, 1.0).item() == pytest.approx(errors.mean().item())
    assert ohem_mean(errors, 0.01).item() == pytest.approx((5 + 10) / 2)  # at least one entry


def test_min_pool_loss_hand_case():
    refined = torch.tensor([[[[0.5, -1.0, 2.0, 3.0]], [[0.1, -2.0, 1.0, 0.0]]]])
    # max_c = [0.5, -1, 2, 3]; two smallest: -1, 0.5 -> ReLU -> 0, 0.5 -> mean 0.25
    assert min_pool_loss(refined, 0.5).item() == pytest.approx(0.25)


def test_classification_triplet_loss_is_mean_of_branches():
    labels = torch.tensor([[1.0, 0.0]])
    s = [torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[-1.0, 1.0]])]
    expected = sum(F.multilabel_soft_margin_loss(t, labels) for t in s) / 3
    torch.testing.assert_close(classification_triplet_loss(tuple(s), labels), expected)


def test_tcp_loss_value_and_stop_gradient():
    y_o = torch.tensor([[[[0.8, 0.2]]]], requires_grad=True)
    y_h = torch.tensor([[[[0.3, 0.1]]]], requires_grad=True)
    y_hb = torch.tensor([[[[0.4, 0.3]]]], requires_grad=True)
    r_o = torch.tensor([[[[0.5, 0.5]]]], requires_grad=True)
    r_h = torch.tensor([[[[0.2, 0.0]]]], requires_grad=True)
    r_hb = torch.tensor([[[[0.1, 0.6]]]], requires_grad=True)
    loss = tcp_loss(y_o, y_h, y_hb, r_o, r_h, r_hb)
    # raw: |0.7 - 0.8|, |0.4 - 0.2| -> 0.15; refined: |0.3 - 0.5|, |0.6 - 0.5| -> 0.15
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    assert y_h.grad is None and y_hb.grad is None  # Sec. 3.1: stop-gradient on the pair
    torch.testing.assert_close(y_o.grad, torch.tensor([[[[0.5, -0.5]]]]))
    torch.testing.assert_close(r_h.grad, torch.tensor([[[[-0.5, 0.5]]]]))
    assert r_o.grad is not None and r_hb.grad is not None


def test_cpcr_loss_value_targets_and_detach():
    # B=1, K=2 (bg, one fg), 1x2 pixels; maps already weighted with channel 0 from Eq. 16.
    y_o = torch.tensor([[[[0.2, 0.9]], [[0.8, 0.1]]]], requires_grad=True)
    y_h = torch.tensor([[[[0.6, 0.95]], [[0.4, 0.05]]]], requires_grad=True)
    y_hb = torch.tensor([[[[0.7, 0.9]], [[0.3, 0.1]]]], requires_grad=True)
    r_h = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]]]], requires_grad=True)
    r_hb = torch.tensor([[[[0.0, 0.2]], [[0.3, 0.0]]]], requires_grad=True)
    # y_o - y_h = [[-0.4, -0.05], [0.4, 0.05]] -> max_onehot [[0, 0], [0.4, 0.05]]
    # |T1 - r_hb| = [[0, 0.2], [0.1, 0.05]] -> top 50 % (2 of 4): 0.2, 0.1 -> 0.15
    # y_o - y_hb = [[-0.5, 0], [0.5, 0]] -> max_onehot [[0, 0], [0.5, 0]] (tie at pixel 2: both 0)
    # |T2 - r_h| = [[0.5, 0.5], [0, 0.5]] -> top 2: 0.5, 0.5 -> 0.5
    loss = cpcr_loss(y_o, y_h, y_hb, r_h, r_hb, ohem_ratio=0.5)
    assert loss.item() == pytest.approx(0.65)
    loss.backward()
    assert y_o.grad is None and y_h.grad is None and y_hb.grad is None  # detached targets
    assert r_h.grad is not None and r_hb.grad is not None
    # Eq. 15 as written (dense target): |T1 - r_hb| = [[0.4, 0.25], [0.1, 0.05]] -> 0.325;
    # |T2 - r_h| = [[1.0, 0.5], [0, 0.5]] -> 0.75
    dense = cpcr_loss(y_o, y_h, y_hb, r_h, r_hb, ohem_ratio=0.5, target="dense")
    assert dense.item() == pytest.approx(1.075)


def test_losses_step_on_tiny_network():
    net = tiny_net()
    method = CPN(CPNConfig(strategy="grid"))
    batch = {
        "image": torch.rand(2, 3, 32, 32) * 255,
        "labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
    }
    torch.manual_seed(7)
    terms = method.losses(net, batch, StepInfo(0, 0, 1))
    assert set(terms) == {"cls", "_cls", "minpool", "tcp", "cpcr"}
    # "_cls": the original image's own classification loss (health), not trained.
    assert not terms["_cls"].requires_grad and terms["_cls"] > 0
    loss = total_loss(terms)
    assert torch.isfinite(loss)
    loss.backward()
    assert net.classifier.weight.grad is not None and net.pcm.embed.weight.grad is not None
    no_pool = CPN(CPNConfig(strategy="superpixel", n_segments=8, minpool_loss=False))
    assert set(no_pool.losses(net, batch, StepInfo(0, 0, 1))) == {"cls", "_cls", "tcp", "cpcr"}


def test_handover_trains_the_baseline_until_the_cams_are_positive():
    """With handover_cam_positive (and a warm-up), steps train the plain CAM baseline on the
    original images (L_tcp, L_cpcr, min-pool constant 0) until, after the warm-up, the present
    classes' CAMs are positive; the CP triplet starts at the next step and stays on."""
    from wsss.methods.cam import classification_loss

    net = tiny_net(cam_dropout=0.0)  # deterministic logits
    batch = {"image": torch.rand(2, 3, 32, 32) * 255, "labels": torch.tensor([[1.0, 0, 0]] * 2)}
    method = CPN(CPNConfig(strategy="grid", handover_cam_positive=0.9, warmup_fraction=0.2))
    with torch.no_grad():  # class 0's CAM positive everywhere
        net.classifier.weight.abs_().add_(1.0)
    terms = method.losses(net, batch, StepInfo(0, 1, 10))  # warm-up: the gate cannot open
    assert method.gate.opened_at is None
    expected = classification_loss(net(batch["image"])["logits"], batch["labels"])
    assert torch.allclose(terms["cls"], expected)  # the original images alone, weight 1
    assert all(terms[k] == 0 and not terms[k].requires_grad for k in ("tcp", "cpcr", "minpool"))
    with torch.no_grad():  # now below zero: after the warm-up, still closed
        net.classifier.weight.neg_()
    method.losses(net, batch, StepInfo(0, 2, 10))
    assert method.gate.opened_at is None
    with torch.no_grad():
        net.classifier.weight.neg_()
    terms = method.losses(net, batch, StepInfo(0, 3, 10))
    assert method.gate.opened_at == 3 and terms["tcp"] == 0  # opens; this step is a baseline one
    torch.manual_seed(7)
    terms = method.losses(net, batch, StepInfo(0, 4, 10))
    assert terms["tcp"].requires_grad and terms["cpcr"].requires_grad  # the triplet
    with torch.no_grad():
        net.classifier.weight.neg_()
    method.losses(net, batch, StepInfo(0, 5, 10))
    assert method.gate.opened_at == 3  # latched
    ungated = CPN(CPNConfig(strategy="grid"))  # the paper's: the triplet from the first step
    assert ungated.losses(tiny_net(), batch, StepInfo(0, 0, 10))["tcp"].requires_grad
    assert ungated.gate.opened_at is None


# ---------------------------------------------------------------------------------------------
# Registry, presets, end to end


def test_paper_preset_sets_the_cpn_recipe():
    cfg = build_config(build_parser().parse_args(["cpn", "--preset", "paper"]))
    assert isinstance(cfg.method, CPNConfig) and get_method("cpn") is CPN
    c = cfg.cls
    assert (c.backbone.name, c.backbone.output_stride) == ("resnet38d", 8)
    assert (c.batch_size, c.epochs, c.crop, c.resize_long) == (4, 8, 448, (448, 768))
    assert (c.optim.lr, c.optim.weight_decay, c.optim.poly_power) == (0.01, 5e-4, 0.9)
    assert c.optim.legacy_psa_momentum and cfg.cam.normalize == "minmax"
    assert (cfg.method.strategy, cfg.method.n_segments, cfg.method.hide_prob) == (
        "superpixel",
        200,
        0.5,
    )
    assert cfg.method.ohem_ratio == 0.2
    assert (cfg.method.cam_dropout, cfg.method.infer_refined) == (0.5, True)
    default = build_config(build_parser().parse_args(["cpn"]))
    assert (default.method.cam_dropout, default.method.infer_refined) == (0.0, False)
    smoke = build_config(build_parser().parse_args(["cpn", "--preset", "smoke"]))
    assert smoke.cls.backbone.name == "mobilenetv2"  # shared presets untouched
    assert (smoke.method.cam_dropout, smoke.method.infer_refined) == (0.5, True)


@pytest.mark.slow
def test_cpn_smoke_end_to_end(tmp_path, cache_dir):
    out = tmp_path / "cpn-smoke"
    assert main(["cpn", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "cpn"
    for key in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert 0.0 <= report[key] <= 100.0
    assert (out / "classifier.pt").exists() and (out / "deeplab.pt").exists()
    model, meta = load_classifier(out / "classifier.pt")
    assert isinstance(model, CPNNet) and meta["method"] == "cpn"
    cams = model.cam(torch.rand(1, 3, 64, 64) * 255)
    assert cams.shape[:2] == (1, len(meta["class_names"]) - 1)


def test_superpixel_count_keeps_the_papers_segment_size_in_pixels():
    assert superpixel_count(200, 448) == 200  # the paper's S_N at its crop
    assert superpixel_count(200, 128) == 16  # ~32 px a segment either way (448^2 / 200 ~ 32^2)
    side_paper, side_here = (448**2 / 200) ** 0.5, (128**2 / superpixel_count(200, 128)) ** 0.5
    assert abs(side_paper - side_here) < 1.0
    assert superpixel_count(200, 16) == 2  # never fewer than a complementary pair needs
