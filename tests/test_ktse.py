"""KTSE: each loss on a hand-computed case, pairs, PAR, erasing, the network, and a smoke run."""

import json
import math

import pytest
import torch
from torch import nn

from wsss.checkpoint import load_classifier
from wsss.cli import main
from wsss.config import RunConfig
from wsss.methods import StepInfo, get_method
from wsss.methods.handover import present_positive_fraction
from wsss.methods.ktse import KTSE, LOSS_NAMES, KTSEConfig, in_warmup
from wsss.methods.ktse_losses import (
    erase_images,
    erase_masks,
    global_alignment_loss,
    global_probability_loss,
    inter_class_loss,
    knowledge_transfer_loss,
    local_alignment_loss,
    masked_cross_entropy,
    max_norm,
    present_keys,
    pseudo_labels,
    sample_pairs,
    select_stacked,
    ssr_cross_entropy,
    stack_pair,
)
from wsss.methods.ktse_net import GatedPyramidPooling, KTSENet
from wsss.models.backbones import Backbone
from wsss.refine.par import PARParams, neighbour_offsets, par_affinity, pixel_adaptive_refine

RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def stripes(colours: list[tuple[float, float, float]], h: int, w_each: int) -> torch.Tensor:
    """An RGB image [1, 3, h, len(colours) * w_each] of vertical colour stripes."""
    cols = [torch.tensor(c).view(3, 1, 1).expand(3, h, w_each) for c in colours]
    return torch.cat(cols, dim=2)[None]


class TinyBackbone(Backbone):
    """A stride-4 conv backbone, so the method runs in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.channels, self.strides, self.output_stride = [8], [4], 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.relu(self.conv(x))]


# ---------------------------------------------------------------------------------------------
# SIE


def test_knowledge_transfer_loss_value_mask_and_both_sides_get_gradient():
    # n=1, C=2, 2h=2, w=1. Class 0 present, class 1 absent.
    teacher = torch.tensor([[[[1.0], [0.2]], [[5.0], [5.0]]]], requires_grad=True)
    stacked = torch.tensor([[[[0.5], [0.5]], [[0.0], [0.0]]]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0]])
    loss = knowledge_transfer_loss(teacher, stacked, labels, margin=0.05)
    # relu(1 - 0.5 - 0.05) = 0.45 at one of 4 elements; the 0.2 cell and the absent class add 0.
    assert loss.item() == pytest.approx(0.45 / 4)
    loss.backward()
    assert teacher.grad[0, 0, :, 0].tolist() == pytest.approx([0.25, 0.0])
    assert stacked.grad[0, 0, :, 0].tolist() == pytest.approx([-0.25, 0.0])
    assert teacher.grad[0, 1].abs().sum() == 0 and stacked.grad[0, 1].abs().sum() == 0


def test_knowledge_transfer_without_margin_is_eq3():
    teacher, stacked = torch.tensor([[[[2.0]]]]), torch.tensor([[[[1.5]]]])
    assert knowledge_transfer_loss(teacher, stacked, torch.ones(1, 1), 0.0).item() == 0.5
    assert knowledge_transfer_loss(stacked, teacher, torch.ones(1, 1), 0.0).item() == 0.0


def test_sample_pairs_share_a_class_and_fall_back_without_one():
    labels = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float
    )
    for seed in range(20):
        partner, shares = sample_pairs(labels, torch.Generator().manual_seed(seed))
        assert shares.tolist() == [True, True, True, False, False]
        assert (partner != torch.arange(5)).all()  # never the anchor itself
        for i in range(3):
            assert (labels[i] * labels[partner[i]]).sum() > 0
    # The only image with class 0 besides image 0 is image 1: always chosen.
    assert partner[0] == 1 and partner[2] == 1


def test_sample_pairs_single_image_pairs_with_itself():
    partner, shares = sample_pairs(torch.tensor([[1.0, 0.0]]))
    assert partner.tolist() == [0] and shares.tolist() == [False]


def test_sample_pairs_draws_class_then_image():
    # Anchor 0 has classes a and b; a is in images 1 and 2, b only in image 3.
    # P(3) = 1/2 (class b), P(1) = P(2) = 1/4.
    labels = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 1]], dtype=torch.float)
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_pairs(labels, gen)[0][0] for _ in range(800)])
    freq = torch.bincount(picks, minlength=4).float() / 800
    assert freq.tolist() == pytest.approx([0.0, 0.25, 0.25, 0.5], abs=0.05)


def test_select_stacked_prefers_sharing_anchors():
    shares = torch.tensor([False, True, False, True, True])
    assert select_stacked(shares, 2).tolist() == [1, 3]
    assert select_stacked(shares, 4).tolist() == [1, 3, 4, 0]
    assert select_stacked(shares, 0, "skip").tolist() == [1, 3, 4]
    assert select_stacked(torch.zeros(3, dtype=torch.bool), 4, "skip").numel() == 0


def test_stack_pair_concatenates_along_height_or_width():
    a, b = torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)
    tall = stack_pair(a, b, "height")
    assert tall.shape == (2, 3, 8, 5) and tall[:, :, 4:].eq(1).all() and tall[:, :, :4].eq(0).all()
    assert stack_pair(a, b, "width").shape == (2, 3, 4, 10)


# ---------------------------------------------------------------------------------------------
# SSR


def test_masked_cross_entropy_is_zero_without_pixels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    loss = masked_cross_entropy(logits, target, torch.ones(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().sum() == 0


def test_ssr_cross_entropy_bg_and_fg_terms_and_simple_split():
    # B=2, C+1=3, 1x2 pixels. Image 0 is simple (fg counts), image 1 complex (fg ignored).
    logits = torch.zeros(2, 3, 1, 2)
    logits[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])  # bg pixel, target 0
    logits[0, :, 0, 1] = torch.tensor([0.0, 1.0, 0.0])  # fg pixel, target 1
    logits[1, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0])  # bg pixel, target 0
    logits[1, :, 0, 1] = torch.tensor([0.0, 0.0, 3.0])  # fg pixel of a complex image
    logits.requires_grad_()
    pseudo = torch.tensor([[[0, 1]], [[0, 2]]])
    l_bg, l_fg = ssr_cross_entropy(logits, pseudo, torch.tensor([True, False]))
    ce_a = math.log(1 + 2 * math.exp(-2))  # -log softmax([2, 0, 0])[0]
    ce_b = math.log(3)
    assert l_bg.item() == pytest.approx((ce_a + ce_b) / 2)
    assert l_fg.item() == pytest.approx(math.log(1 + 2 * math.exp(-1)))
    (l_bg + l_fg).backward()
    assert logits.grad[1, :, 0, 1].abs().sum() == 0  # complex image's fg pixel: no gradient
    l_bg, l_fg = ssr_cross_entropy(logits, torch.full_like(pseudo, 255), torch.ones(2).bool())
    assert l_bg.item() == 0.0 and l_fg.item() == 0.0


def test_inter_class_loss_value_mask_ties_and_detached_max():
    # C=3, 1x2 pixels: [3, 2, 1] (V^2nd = 2) and [1, 4, 4] (tied max removed together -> 1).
    cams = torch.tensor([[[[3.0, 1.0]], [[2.0, 4.0]], [[1.0, 4.0]]]], requires_grad=True)
    mask = torch.tensor([[[True, True]]])
    loss = inter_class_loss(cams, mask)
    assert loss.item() == pytest.approx(((2 - 3) + (1 - 4)) / (2 + 1e-5))
    loss.backward()
    g = cams.grad[0, :, 0]  # [C, 2]
    assert g[:, 0].tolist() == pytest.approx([0.0, 0.5, 0.0], abs=1e-4)  # only the runner-up
    assert g[:, 1].tolist() == pytest.approx([0.5, 0.0, 0.0], abs=1e-4)
    cams.grad = None
    loss = inter_class_loss(cams, torch.tensor([[[True, False]]]), detach_max=False)
    assert loss.item() == pytest.approx(-1 / (1 + 1e-5))
    loss.backward()
    assert cams.grad[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
    assert cams.grad[0, :, 0, 1].abs().sum() == 0  # outside M^f
    empty = inter_class_loss(cams, torch.zeros(1, 1, 2, dtype=torch.bool))
    assert empty.item() == 0.0


def test_present_keys_pads_with_invalid_slots():
    keys, valid = present_keys(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert keys.tolist() == [[0, 2, 3], [0, 1, 0], [0, 0, 0]]
    assert valid.tolist() == [[True, True, True], [True, True, False], [True, False, False]]


def test_pseudo_labels_two_thresholds_absent_classes_and_ignore():
    # Stripes red | green | blue, 4 px each. Class 1 present: CAM 1 / 0.35 / -1 on the stripes;
    # class 2 absent with a huge CAM that must never be used.
    image = stripes([RED, GREEN, BLUE], 6, 4) * 255
    cams = torch.cat([torch.full((1, 1, 6, 4), v) for v in (1.0, 0.35, -1.0)], dim=3)
    cams = torch.cat([cams, torch.full_like(cams, 50.0)], dim=1)
    labels = torch.tensor([[1.0, 0.0]])
    y = pseudo_labels(image, cams, labels, beta_h=0.6, beta_l=0.1, down_scale=1)
    assert y.shape == (1, 6, 12) and y.dtype == torch.long
    # red: 1 > 0.6 (confident fg); green: 0.1 < 0.35 < 0.6 (ignore); blue: bg at both scores.
    assert y[0, :, :4].eq(1).all() and y[0, :, 4:8].eq(255).all() and y[0, :, 8:].eq(0).all()
    # A present class that is negative everywhere: its image is ignored (default), or becomes
    # background (clamped max), or the sign-flipped map floods it (the authors' division).
    dead = cams - 5.0
    common = dict(beta_h=0.6, beta_l=0.1, down_scale=1)
    assert pseudo_labels(image, dead, labels, **common).eq(255).all()
    assert pseudo_labels(image, dead, labels, dead_class="background", **common).eq(0).all()
    assert pseudo_labels(image, dead, labels, dead_class="code", **common).eq(1).all()
    # Only the dead image is ignored in a batch.
    both = pseudo_labels(
        image.expand(2, -1, -1, -1), torch.cat([cams, dead]), labels.repeat(2, 1), **common
    )
    assert torch.equal(both[0], y[0]) and both[1].eq(255).all()
    y2 = pseudo_labels(image.expand(2, -1, -1, -1), cams.expand(2, -1, -1, -1), labels.repeat(2, 1))
    assert y2.shape == (2, 6, 12)  # default half-resolution PAR, labels back at full size
    assert set(y2.unique().tolist()) <= {0, 1, 255}


# ---------------------------------------------------------------------------------------------
# PAR


def test_par_shape_and_affinity_rows():
    image, masks = torch.rand(2, 3, 9, 11), torch.rand(2, 4, 5, 6)
    assert pixel_adaptive_refine(image, masks).shape == (2, 4, 9, 11)
    aff = par_affinity(image)
    assert aff.shape == (2, 48, 9, 11) and len(neighbour_offsets((1, 2, 4, 8, 12, 24))) == 48
    assert torch.allclose(aff.sum(1), torch.full((2, 9, 11), 1.01))  # softmax + w2 softmax


def test_par_keeps_a_constant_map_constant():
    params = PARParams(num_iter=10)
    out = pixel_adaptive_refine(torch.rand(1, 3, 8, 8), torch.full((1, 2, 8, 8), 0.3), params)
    # AFA's weights sum to 1 + w2, so the constant grows uniformly by (1 + w2) per step.
    assert torch.allclose(out, torch.full_like(out, 0.3 * 1.01**10), atol=1e-5)


def test_par_moves_labels_to_the_colour_edge():
    # Red | blue halves; the label map puts class A two columns into the blue half and has one
    # wrong pixel inside the red half. PAR follows the colours.
    image = stripes([RED, BLUE], 8, 4)
    masks = torch.zeros(1, 2, 8, 8)
    masks[:, 0, :, :6], masks[:, 1, :, 6:] = 1.0, 1.0
    masks[:, :, 3, 1] = torch.tensor([0.0, 1.0])
    label = pixel_adaptive_refine(image, masks).argmax(1)[0]
    assert label[:, :4].eq(0).all() and label[:, 4:].eq(1).all()


# ---------------------------------------------------------------------------------------------
# MGA


def test_max_norm_modes():
    cams = torch.tensor([[[[-1.0, 1.0, 3.0]]]])
    assert max_norm(cams, "max")[0, 0, 0].tolist() == pytest.approx([0.0, 1 / 3, 1.0], abs=1e-4)
    assert max_norm(cams, "minmax")[0, 0, 0].tolist() == pytest.approx([0, 1 / 3, 1], abs=1e-4)
    with pytest.raises(ValueError):
        max_norm(cams, "softmax")


def test_erasing_masks_the_present_class_peak_with_the_mean_colour():
    cams = torch.ones(1, 2, 4, 4)
    cams[0, 0, 0, 0] = 10.0  # present class peak (erased)
    cams[0, 1, 3, 3] = 100.0  # absent class peak (ignored)
    labels = torch.tensor([[1.0, 0.0]])
    keep_img, keep_feat = erase_masks(cams, labels, (8, 8), threshold=0.6)
    assert keep_feat.shape == (1, 1, 4, 4) and keep_img.shape == (1, 1, 8, 8)
    assert not keep_feat[0, 0, 0, 0] and keep_feat.sum() == 15
    assert not keep_img[0, 0, 0, 0] and keep_img[0, 0, 4:, 4:].all()
    image = torch.full((1, 3, 8, 8), 200.0)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    erased = erase_images(image, keep_img, mean)
    assert torch.equal(erased[0, :, 0, 0], mean.flatten())
    assert torch.equal(erased[0, :, 7, 7], image[0, :, 7, 7])


def test_global_alignment_loss_value_labels_and_gradients():
    anchor = torch.tensor([[[[1.0, 3.0]], [[-1.0, 1.0]]]], requires_grad=True)  # GAP 2, 0.5
    erased = torch.tensor([[[[0.5, 1.5]], [[4.0, 4.0]]]], requires_grad=True)  # GAP 1, 4
    loss = global_alignment_loss(anchor, erased, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.5)  # (|2 - 1| + 0) / (B C = 2)
    loss.backward()
    assert anchor.grad[0, 0, 0].tolist() == pytest.approx([0.25, 0.25])
    assert erased.grad[0, 0, 0].tolist() == pytest.approx([-0.25, -0.25])
    assert anchor.grad[0, 1].abs().sum() == 0 and erased.grad[0, 1].abs().sum() == 0


def test_global_probability_loss_value_labels_and_saturation():
    anchor = torch.tensor([[0.0, 3.0]], requires_grad=True)
    erased = torch.tensor([[math.log(3.0), -3.0]], requires_grad=True)  # sigmoid 0.75
    loss = global_probability_loss(anchor, erased, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.25 / 2)  # (|0.5 - 0.75| + 0) / (B C = 2)
    loss.backward()
    assert anchor.grad[0].tolist() == pytest.approx([-0.25 * 0.5, 0.0])  # sigma'(0) / 2
    assert erased.grad[0].tolist() == pytest.approx([0.75 * 0.25 * 0.5, 0.0])
    # The pull on the erased image fades once both recognise the class (L1 of GAPs: constant).
    pulls = []
    for score in (1.0, 8.0):  # the erased image one logit below the anchor
        low = torch.tensor([[score - 1.0]], requires_grad=True)
        global_probability_loss(torch.tensor([[score]]), low, torch.ones(1, 1)).backward()
        pulls.append(-low.grad.item())
    assert pulls[0] == pytest.approx(0.25) and 0 < pulls[1] < 1e-3  # sigma'(0), sigma'(7)


def test_mga_probability_space_detaches_the_anchor_logits():
    method = KTSE(KTSEConfig(global_space="probability", global_detach_anchor=True))
    net = KTSENet(TinyBackbone(), 3, score="gap")
    batch = _batch()
    out = net(batch["image"])
    terms = method._mga(net, batch["image"], out, batch["labels"])
    assert terms["global"] > 0
    (grad,) = torch.autograd.grad(
        terms["global"], out["logits"], retain_graph=True, allow_unused=True
    )
    assert grad is None  # only the erased image's score is pulled
    assert torch.autograd.grad(terms["global"], net.fc9.weight)[0].abs().sum() > 0
    with pytest.raises(ValueError, match="gap or probability"):
        KTSE(KTSEConfig(global_space="maps"))  # refused when built, not at the hand-over


def test_local_alignment_loss_value_keep_mask_and_gradients():
    erased = torch.tensor([[[[1.0, 0.0, 9.0]]]], requires_grad=True)
    anchor = torch.tensor([[[[0.5, 0.5, 0.0]]]], requires_grad=True)
    keep = torch.tensor([[[[True, True, False]]]])
    loss = local_alignment_loss(erased, anchor, torch.ones(1, 1), keep, margin=0.05)
    assert loss.item() == pytest.approx(0.45 / 3)
    loss.backward()
    assert erased.grad[0, 0, 0].tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    assert anchor.grad[0, 0, 0].tolist() == pytest.approx([-1 / 3, 0.0, 0.0])
    assert local_alignment_loss(erased, anchor, torch.ones(1, 1), None, 0.0).item() == (
        pytest.approx((0.5 + 9.0) / 3)
    )


# ---------------------------------------------------------------------------------------------
# Network and the training step


def test_gpp_and_network_contracts():
    net = KTSENet(TinyBackbone(), num_classes=3)
    x = torch.rand(2, 3, 32, 40) * 255
    out = net(x)
    assert out["logits"].shape == (2, 3) and out["cams_all"].shape == (2, 4, 8, 10)
    assert torch.equal(out["cams"], out["cams_all"][:, 1:])
    assert torch.allclose(net.cam(x), torch.relu(out["cams"]))
    assert "logits" not in net(x, with_logits=False)
    assert {id(m) for m in net.new_modules()} == {id(net.fc8), id(net.fc9), id(net.gpp)}
    assert not hasattr(net, "classifier")
    assert GatedPyramidPooling(2)(torch.rand(1, 2, 5, 5)).shape == (1, 2)


def test_gap_score_is_the_mean_of_the_foreground_features():
    net = KTSENet(TinyBackbone(), 3, score="gap")
    assert net.gpp is None and {id(m) for m in net.new_modules()} == {id(net.fc8), id(net.fc9)}
    out = net(torch.rand(2, 3, 32, 32) * 255)
    assert torch.allclose(out["logits"], out["cams"].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="gpp or gap"):
        KTSENet(TinyBackbone(), 3, score="max")


def _batch() -> dict:
    torch.manual_seed(0)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float)
    return {"image": torch.rand(4, 3, 32, 32) * 255, "labels": labels, "name": list("abcd")}


def test_warmup_is_classification_only():
    assert in_warmup(StepInfo(0, 2, 10), 0.25) and not in_warmup(StepInfo(0, 3, 10), 0.25)
    method = KTSE(KTSEConfig())
    net = KTSENet(TinyBackbone(), 3)
    terms = method.losses(net, _batch(), StepInfo(0, 0, 10))
    assert set(terms) == set(LOSS_NAMES)
    assert terms["cls"] > 0 and all(terms[k] == 0 for k in LOSS_NAMES if k != "cls")
    sum(terms.values()).backward()
    assert net.fc9.weight.grad[0].abs().sum() == 0  # background channel untouched by L_cls


def test_present_positive_fraction_counts_images_with_every_present_class_positive():
    cams = torch.tensor([[1.0, -1.0], [1.0, 2.0], [-1.0, -2.0], [5.0, 5.0]])[:, :, None, None]
    labels = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # image 0: class 2 dead; image 1 healthy; image 2 dead; image 3 unlabelled (not counted)
    assert present_positive_fraction(cams, labels).item() == pytest.approx(1 / 3)


def test_handover_waits_for_positive_cams_then_ramps():
    method = KTSE(KTSEConfig(warmup_fraction=0.1, handover_cam_positive=0.9, ramp_fraction=0.5))
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    dead = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])[:, :, None, None]
    alive = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None]
    assert method.auxiliary_weight(StepInfo(0, 0, 10), alive, labels) == 0.0  # warm-up
    assert method.auxiliary_weight(StepInfo(0, 2, 10), dead, labels) == 0.0  # 50 % positive
    assert method.gate.opened_at is None
    assert method.auxiliary_weight(StepInfo(0, 3, 10), alive, labels) == pytest.approx(0.2)
    assert method.gate.opened_at == 3
    # Kept on when the CAMs dip again; the ramp reaches 1 after 0.5 x 10 steps.
    assert method.auxiliary_weight(StepInfo(0, 4, 10), dead, labels) == pytest.approx(0.4)
    assert method.auxiliary_weight(StepInfo(0, 9, 10), dead, labels) == 1.0
    plain = KTSE(KTSEConfig(warmup_fraction=0.1))  # the authors': hand over after the warm-up
    assert plain.auxiliary_weight(StepInfo(0, 1, 10), dead, labels) == 1.0


def test_auxiliary_losses_are_scaled_by_the_ramp():
    full = KTSE(KTSEConfig(warmup_fraction=0.0))
    ramped = KTSE(KTSEConfig(warmup_fraction=0.0, ramp_fraction=0.4))  # weight 1 / 4 at step 0
    torch.manual_seed(1)
    a = full.losses(KTSENet(TinyBackbone(), 3), _batch(), StepInfo(0, 0, 10))
    torch.manual_seed(1)
    b = ramped.losses(KTSENet(TinyBackbone(), 3), _batch(), StepInfo(0, 0, 10))
    assert b["cls"] == a["cls"]
    for key in ("ce_bg", "global", "local"):
        assert b[key].item() == pytest.approx(a[key].item() / 4, rel=1e-5), key


def test_full_step_runs_every_loss_and_trains_the_background_channel():
    method = KTSE(KTSEConfig())
    net = KTSENet(TinyBackbone(), 3)
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    terms = method.losses(net, _batch(), StepInfo(0, 5, 10))
    assert set(terms) == set(LOSS_NAMES)
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(terms[k] != 0 for k in ("cls", "ce_bg", "ce_stack", "global"))
    # anchor, erased, stacked (4 pairs of 32 x 32 stacked vertically)
    assert calls == [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 64, 32)]
    sum(terms.values()).backward()
    assert net.fc9.weight.grad[0].abs().sum() > 0
    assert all(p.grad is not None for p in net.gpp.parameters())


def test_ablation_switches_drop_their_branches():
    cfg = KTSEConfig(use_sie=False, use_mga=False)
    terms = KTSE(cfg).losses(KTSENet(TinyBackbone(), 3), _batch(), StepInfo(0, 9, 10))
    assert terms["kt"] == 0 and terms["global"] == 0 and terms["ce_bg"] != 0


def test_presets():
    method_cls = get_method("ktse")
    assert method_cls is KTSE
    smoke = RunConfig(method=KTSEConfig())
    KTSE(smoke.method).apply_preset("smoke", smoke)
    assert smoke.method.warmup_fraction == 0.0
    paper = RunConfig(method=KTSEConfig())
    KTSE(paper.method).apply_preset("paper", paper)
    c = paper.cls
    assert (c.backbone.name, c.backbone.output_stride) == ("resnet38d", 8)
    assert (c.epochs, c.batch_size, c.crop, c.resize_long) == (40, 16, 320, (256, 512))
    assert (c.optim.lr, c.optim.weight_decay, c.optim.head_lr_mult) == (0.01, 5e-4, 1.0)
    assert c.optim.legacy_psa_momentum and c.color_jitter == 0.0
    assert paper.method.warmup_fraction == 0.25  # 10 of 40 epochs
    assert (paper.pseudo.conf_fg, paper.pseudo.conf_bg) == (0.30, 0.10)


# ---------------------------------------------------------------------------------------------
# End to end


def test_smoke_run(tmp_path, cache_dir):
    out = tmp_path / "ktse-smoke"
    assert main(["ktse", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ktse"
    for key in ("seed_miou", "pseudo_miou", "seg_miou"):
        assert 0.0 <= report[key] <= 100.0
    assert (out / "classifier.pt").is_file() and (out / "deeplab.pt").is_file()
    model, meta = load_classifier(out / "classifier.pt")
    assert isinstance(model, KTSENet) and meta["method"] == "ktse"
    c = len(meta["class_names"]) - 1
    x = torch.rand(1, 3, 64, 64) * 255
    assert model(x)["logits"].shape == (1, c) and model.cam(x).shape[:2] == (1, c)
