"""AffinityNet refinement: labels, pairs, loss, random walk, network, and --refine affinity."""

import json
import math

import numpy as np
import pytest
import torch

from wsss.cli import main
from wsss.config import RunConfig, set_value
from wsss.constants import IGNORE_INDEX
from wsss.models.affinity_net import AffinityNet
from wsss.models.backbones import build_backbone
from wsss.models.normalize import Normalize
from wsss.refine.affinity import (
    affinity_loss,
    background_score,
    block_labels,
    combine_la_ha,
    crf_label,
    dense_affinity,
    pair_affinities,
    pair_indices,
    pair_labels,
    pair_offsets,
    random_walk,
    transition_matrix,
    upsample_scores,
    walk_labels,
    walk_scores,
)
from wsss.refine.crf import CRF_PRESETS

X = IGNORE_INDEX


# --- labels -----------------------------------------------------------------------------------


def test_background_score_is_one_minus_max_to_the_alpha():
    cams = np.array([[[0.0, 0.5]], [[0.2, 1.0]]], dtype=np.float32)  # [K=2, 1, 2]
    np.testing.assert_allclose(background_score(cams, 2.0), [[[0.64, 0.0]]])
    assert background_score(np.zeros((0, 1, 2), np.float32), 4.0).tolist() == [[[1.0, 1.0]]]


def test_block_labels_take_the_majority_and_mark_all_padding_blocks():
    labels = torch.tensor(
        [
            [3, 3, 0, 0, X, X],
            [3, 0, 0, 0, X, X],
            [1, 1, 0, 3, X, 0],
            [1, X, 3, 3, X, X],
        ],
        dtype=torch.uint8,
    )
    out = block_labels(labels, 2, num_labels=4)
    assert out.dtype == torch.uint8
    assert out.tolist() == [[3, 0, X], [1, 3, 0]]  # padding does not vote; all-padding -> 255


def test_combine_la_ha_is_psa_rule():
    # la: confident foreground (bg elsewhere); ha: confident background (fg elsewhere)
    la = torch.tensor([[2, 2, 0, 0, 2, X]])
    ha = torch.tensor([[2, 0, 2, 0, X, 2]])
    # fg where la is fg; la bg -> ignore; ha bg -> bg (wins over la); padding -> ignore
    assert combine_la_ha(la, ha).tolist() == [[2, 0, X, 0, X, X]]


def test_combine_of_a_mask_with_itself_is_the_mask():
    mask = torch.tensor([[0, 3, X, 3, 0]])  # affinity.labels="pseudo" stores la = ha = mask
    assert combine_la_ha(mask, mask).tolist() == mask.tolist()


def test_crf_label_maps_to_class_ids_and_handles_no_class():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 200
    cams = np.zeros((1, 8, 8), np.float32)
    cams[0, :, 4:] = 1.0
    label = crf_label(image, cams, np.array([7]), 4.0, CRF_PRESETS["psa"])
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 7}
    assert (label[:, 5:] == 7).all() and (label[:, :3] == 0).all()
    no_class = np.zeros((0, 8, 8), np.float32)
    empty = crf_label(image, no_class, np.array([], int), 4.0, CRF_PRESETS["psa"])
    assert (empty == 0).all()


# --- pairs ------------------------------------------------------------------------------------


def test_pair_offsets_are_the_half_disc():
    offsets = pair_offsets(5)
    assert len(offsets) == 34  # psa's search_dst for radius 5
    assert all(0 < dy * dy + dx * dx < 25 for dy, dx in offsets)
    assert len(set(offsets) | {(-dy, -dx) for dy, dx in offsets}) == 68  # no pair twice


def test_pair_indices_are_every_unordered_pair_within_the_radius():
    h, w, r = 4, 6, 3
    src, dst = pair_indices(h, w, r)
    got = {frozenset((int(a), int(b))) for a, b in zip(src, dst, strict=True)}
    coords = [(y, x) for y in range(h) for x in range(w)]
    want = {
        frozenset((i, j))
        for i, (y0, x0) in enumerate(coords)
        for j, (y1, x1) in enumerate(coords)
        if i < j and (y0 - y1) ** 2 + (x0 - x1) ** 2 < r * r
    }
    assert got == want and len(src) == len(want)  # each pair exactly once, border pairs kept


def test_pair_affinities_match_brute_force():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 3, 4)
    src, dst = pair_indices(3, 4, 2)
    flat = feats.flatten(2)
    want = torch.exp(-(flat[:, :, src] - flat[:, :, dst]).abs().mean(1))
    torch.testing.assert_close(pair_affinities(feats, 2), want)


def test_pair_labels_bg_fg_neg_and_ignore():
    labels = torch.tensor([[[0, 0, 2, 2, 3, X]]])  # 1 x 6 grid, radius 2: neighbours only
    bg, fg, neg = pair_labels(labels, 2)
    # pairs (0,1) (1,2) (2,3) (3,4) (4,5)
    assert bg.tolist() == [[True, False, False, False, False]]
    assert fg.tolist() == [[False, False, True, False, False]]
    assert neg.tolist() == [[False, True, False, True, False]]


# --- loss -------------------------------------------------------------------------------------


def test_affinity_loss_value_masks_and_gradient():
    # 1 x 4 grid, 2 channels, radius 2 -> pairs (0,1) (1,2) (2,3)
    feats = torch.tensor([[[[0.0, 0.0, 2.0, 2.0]], [[0.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[[0, 0, 1, X]]])  # bg pair, neg pair, ignored pair
    aff = pair_affinities(feats, 2)
    torch.testing.assert_close(aff.detach(), torch.tensor([[1.0, math.exp(-1.0), 1.0]]))
    terms = affinity_loss(aff, labels, 2)
    eps = 1e-5
    torch.testing.assert_close(terms["bg"], torch.tensor(-math.log(1 + eps) / (1 + eps) / 4))
    assert terms["fg"].item() == 0.0  # no foreground pair
    want_neg = -math.log(1 + eps - math.exp(-1.0)) / (1 + eps) / 2
    torch.testing.assert_close(terms["neg"], torch.tensor(want_neg))
    sum(terms.values()).backward()
    grad = feats.grad[0, 0, 0]
    assert grad[3] == 0  # only in the ignored pair
    assert grad[1] != 0 and grad[2] != 0  # the negative pair pushes them apart


# --- random walk ------------------------------------------------------------------------------


def test_transition_matrix_is_column_stochastic_and_symmetric_affinity():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 3, 5)
    aff = dense_affinity(pair_affinities(feats, 3)[0], 3, 5, 3)
    assert aff.shape == (15, 15)
    torch.testing.assert_close(aff, aff.T)
    assert torch.all(aff.diagonal() == 1)
    trans = transition_matrix(aff, 8.0)
    torch.testing.assert_close(trans.sum(0), torch.ones(15))
    assert (trans >= 0).all()


def test_walk_spreads_within_a_flat_region_not_across_the_edge():
    h, w = 4, 8
    feats = torch.zeros(3, h, w)
    feats[:, :, 4:] = 10.0  # two flat regions, affinity exp(-10) across the edge
    seed = torch.zeros(2, h, w)
    seed[0, 1, 1] = 1.0  # a one-hot seed on the left
    seed[1, 2, 6] = 1.0  # another on the right
    walked = walk_scores(feats, seed, radius=3, beta=8.0, logt=4)
    assert walked.shape == (2, h, w)
    assert (walked[0, :, :4] > 1e-3).all() and (walked[0, :, 4:] < 1e-12).all()
    assert (walked[1, :, 4:] > 1e-3).all() and (walked[1, :, :4] < 1e-12).all()


def test_random_walk_of_uniform_scores_stays_uniform():
    trans = transition_matrix(torch.rand(6, 6) + torch.eye(6), 1.0)
    scores = torch.full((1, 6), 0.3)
    torch.testing.assert_close(random_walk(scores, trans, 3), scores)  # columns average


def test_upsample_and_walk_labels():
    grid = torch.zeros(3, 2, 3)
    grid[0] = 1.0
    grid[2, :, 2] = 2.0
    up = upsample_scores(grid, 4, (7, 10))  # padded 8 x 12 -> cropped to the image
    assert up.shape == (3, 7, 10)
    labels = walk_labels(up.numpy(), np.array([5, 9]))
    assert labels.dtype == np.uint8 and labels[0, 0] == 0 and labels[0, 9] == 9
    assert set(np.unique(labels)) <= {0, 9}


def test_walk_labels_final_crf_moves_the_boundary_to_the_colour_edge():
    """RW + dCRF (``affinity.final_crf``): a walk boundary 4 px off the image edge snaps to it."""
    image = np.zeros((20, 24, 3), np.uint8)
    image[:, 12:] = 255
    fg = 1.0 / (1.0 + np.exp(-(np.arange(24) - 7) / 2.0))  # walked scores cross at column 7.5
    scores = (np.stack([np.tile(1 - fg, (20, 1)), np.tile(fg, (20, 1))]) * 0.9 + 0.05).astype(
        np.float32
    )
    bare = walk_labels(scores, np.array([3]))
    refined = walk_labels(scores, np.array([3]), image, CRF_PRESETS["deeplab"])
    assert (bare[:, :8] == 0).all() and (bare[:, 8:] == 3).all()
    assert (refined[:, :12] == 0).all() and (refined[:, 12:] == 3).all()


# --- network and config ----------------------------------------------------------------------


def test_affinity_net_shapes_and_new_modules():
    backbone = build_backbone("mobilenetv2", output_stride=16, pretrained=None)
    net = AffinityNet(backbone, Normalize((0.0,) * 3, (1.0,) * 3), (8, 16, 32), 24)
    out = net(torch.rand(2, 3, 64, 48) * 255)
    assert out.shape == (2, 24, 4, 3) and net.stride == 16
    assert len(net.new_modules()) == 2
    with pytest.raises(ValueError, match="feature levels"):
        AffinityNet(backbone, Normalize((0.0,) * 3, (1.0,) * 3), (1,) * 6, 4)


def test_affinity_config_overrides():
    cfg = RunConfig()
    assert cfg.refine == "none" and cfg.affinity.high_alpha == 32.0
    set_value(cfg, "affinity.high_alpha", "24")
    set_value(cfg, "affinity.dims", "32,64")
    assert cfg.affinity.high_alpha == 24.0 and cfg.affinity.dims == (32, 64)


# --- end to end -------------------------------------------------------------------------------


def test_smoke_refine_affinity_end_to_end(tmp_path, cache_dir):
    from wsss.stages.affinity import load_affinity_net, load_walk_scores

    out = tmp_path / "aff"
    args = ["cam", "--preset", "smoke", "--refine", "affinity", "--out", str(out), "--quiet"]
    assert main([*args, "--set", "seg.upper_bound=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["pseudo_miou_affinity"] <= 100.0
    assert 0.0 <= report["pseudo_miou_affinity_best_gt_assisted"] <= 100.0
    assert "pseudo_affinity" in report["per_class_iou"]
    assert {"affinity", "walk"} <= report["stage_seconds"].keys()
    config = json.loads((out / "config.json").read_text())
    assert config["refine"] == "affinity"
    image_id = sorted(p.stem for p in (out / "pseudo_rw").glob("*.png"))[0]
    with np.load(out / "affinity" / f"{image_id}.npz") as data:
        assert data["rw"].dtype == np.float16 and data["rw"].shape[0] == len(data["keys"]) + 1
    keys, scores = load_walk_scores(out, image_id)
    assert scores.shape == (len(keys) + 1, 64, 64)  # smoke images are 64 x 64
    model, meta = load_affinity_net(out / "affinity_net.pt")
    assert meta["kind"] == "affinity" and isinstance(model, AffinityNet)


def test_la_and_ha_get_the_same_crop_and_flip():
    from wsss.stages.affinity import _same_crop_and_flip

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    la = (np.arange(20 * 30).reshape(20, 30) % 200).astype(np.uint8)
    image[..., 0] = la  # the image carries the labels: alignment is checkable
    for seed in range(5):
        out, (a, b) = _same_crop_and_flip(image, (la, la.copy()), 24, np.random.default_rng(seed))
        assert out.shape == (24, 24, 3) and a.shape == (24, 24)
        np.testing.assert_array_equal(a, b)
        assert (a == IGNORE_INDEX).any()  # 20 rows padded to 24
        inside = a != IGNORE_INDEX
        np.testing.assert_array_equal(out[..., 0][inside], a[inside])
