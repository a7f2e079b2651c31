"""FBR (TCSVT 2024): TAP, pseudo labels, prototypes, queries, K-means, bank, sampling, losses."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from stubs import StubBackbone

from wsss.methods.fbr import FBR, FBRConfig, fbr_terms
from wsss.methods.fbr_losses import (
    active_negative_index,
    background_target,
    bg_segmentation_loss,
    class_prototypes,
    contrast_pseudo_labels,
    fg_bg_similarity_loss,
    prototype_contrast_loss,
    sampled_similarity,
    select_queries,
)
from wsss.methods.fbr_modules import FBRNet, NROIBank, batched_kmeans, thresholded_average_pool


def stub_net(**kw) -> FBRNet:
    torch.manual_seed(0)
    return FBRNet(StubBackbone(), num_classes=3, proj_dim=8, bank_size=32, **kw)


# --- TAP (Eq. 11) and the network ----------------------------------------------------------


def test_tap_hand_case():
    f = torch.tensor(
        [[[[1.0, 0.05], [0.5, 0.0]], [[0.2, 0.2], [0.01, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]]
    )
    # ch0: t = 0.1 keeps {1, 0.5}; ch1: t = 0.02 keeps {0.2, 0.2}; ch2: nothing -> 0.
    assert torch.allclose(thresholded_average_pool(f, 0.1), torch.tensor([[0.75, 0.2, 0.0]]))
    # threshold 0 keeps every positive value: mean over positives, not over all pixels.
    assert torch.allclose(thresholded_average_pool(f, 0.0)[0, 0], torch.tensor(1.55 / 3))


def test_network_outputs_scores_and_cam():
    net = stub_net().eval()
    x = torch.rand(2, 3, 16, 16) * 255
    out = net(x)
    f = out["features"]
    assert out["cams"].shape == (2, 3, 4, 4) and out["z_fg"].shape == (2, 8, 4, 4)
    assert out["z_bg"].shape == (2, 8, 4, 4) and out["bg_logits"].shape == (2, 1, 4, 4)
    assert (out["z_fg"] >= 0).all() and (out["z_bg"] >= 0).all()
    w = net.classifier.weight.flatten(1)
    assert torch.allclose(out["logits"], thresholded_average_pool(f, 0.1) @ w.t(), atol=1e-6)
    assert torch.allclose(net.cam(x), torch.relu(out["cams"]))
    gap = stub_net(tap_threshold=None).eval()
    assert torch.allclose(gap(x)["logits"], gap(x)["cams"].mean(dim=(2, 3)))
    heads = {id(m) for m in net.new_modules()}
    assert {id(net.proj_fg), id(net.proj_bg), id(net.bg_classifier), id(net.classifier)} <= heads
    assert {"bank.feats", "bank.ptr", "bank.count"} <= set(net.state_dict())


def test_bg_seg_gradient_reaches_bg_head_only():
    net = stub_net().train()
    out = net(torch.rand(2, 3, 16, 16) * 255)
    target = torch.ones_like(out["bg_logits"])
    bg_segmentation_loss(out["bg_logits"], target).backward()
    assert net.proj_fg.weight.grad is None and net.classifier.weight.grad is None
    assert net.proj_bg.weight.grad.abs().sum() > 0 and net.bg_bn.weight.grad is not None


# --- pseudo labels, Eq. 6 -------------------------------------------------------------------


def test_contrast_pseudo_labels_constant_bg_and_absent_classes():
    cams = torch.tensor([[[[0.0, 0.05, 1.0]], [[5.0, 5.0, 4.0]]]])  # [1, 2, 1, 3]
    scores, labels = contrast_pseudo_labels(cams, torch.tensor([[1.0, 0.0]]), bg_score=0.1)
    assert torch.allclose(scores[0, 0, 0], torch.tensor([0.0, 0.05, 1.0]), atol=1e-4)
    assert (scores[0, 1] == 0).all()  # absent class: never wins
    assert labels.tolist() == [[[2, 2, 0]]]  # bg index = C = 2


def test_background_target_and_bce_value_and_gradient():
    cams = torch.tensor([[[[0.0, 1.0, 2.0]], [[0.001, 0.0, 1.0]], [[9.0, 9.0, 9.0]]]])
    target = background_target(cams, torch.tensor([[1.0, 1.0, 0.0]]), threshold=0.05)
    assert target.tolist() == [[[[1.0, 0.0, 0.0]]]]  # absent class 2 is ignored
    logits = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)
    t = torch.tensor([[[[1.0, 0.0]]]], requires_grad=True)
    loss = bg_segmentation_loss(logits, t)
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e**2)) / 2, abs=1e-6)
    loss.backward()
    expected = torch.tensor([(0.5 - 1) / 2, torch.sigmoid(torch.tensor(2.0)).item() / 2])
    assert torch.allclose(logits.grad.flatten(), expected)
    assert t.grad is None  # the pseudo label is a constant


def test_similarity_loss_value():
    a = torch.tensor([[[[1.0]], [[0.0]]]])  # [1, 2, 1, 1]
    b = torch.tensor([[[[1.0]], [[1.0]]]])
    assert fg_bg_similarity_loss(a, b).item() == pytest.approx(1 / math.sqrt(2))


# --- prototypes (Eq. 3) and queries (Eq. 4) ---------------------------------------------------


def test_class_prototypes_topk_weighted_mean_detached():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    scores = torch.tensor([[0.9, 0.0], [0.1, 0.8], [0.5, 0.0], [0.0, 0.2]])
    proto = class_prototypes(feats, scores, k=2)
    assert torch.allclose(proto[0], F.normalize(torch.tensor([1.4, 0.5]), dim=0))
    assert torch.allclose(proto[1], torch.tensor([0.6, 0.8]))
    assert not proto.requires_grad


def test_select_queries_threshold_and_all():
    scores = torch.tensor([[[0.3, 0.9, 0.0, 0.0], [0.0, 0.0, 0.2, 0.0]]])  # [1, C=2, P=4]
    labels = torch.tensor([[0, 0, 1, 2]])
    assert select_queries(scores, labels, "threshold", 0.4).tolist() == [[1, 0, 1, 0]]
    assert select_queries(scores, labels, "all").tolist() == [[1, 1, 1, 0]]
    with pytest.raises(ValueError):
        select_queries(scores, labels, "hard")


def _reference_percentile_entropy(scores, labels, r, q, bg):
    """Loop version of the FBR code's ``get_reliable_pseudo_label`` (query = label 255)."""
    b, c, p = scores.shape
    out = torch.zeros(b, p, dtype=torch.bool)
    probs = torch.softmax(torch.cat([scores, torch.full_like(scores[:, :1], bg)], 1), 1)
    ent = -(probs * torch.log(probs + 1e-10)).sum(1) * (labels != c)
    for i in range(b):
        sure = torch.zeros(p, dtype=torch.bool)
        for k in labels[i].unique():
            if k == c:
                continue
            cam = scores[i, k].clone()
            cam[labels[i] != k] = 0
            order = cam[cam > 0.05].sort().values
            if len(order):
                sure |= cam > order[int(len(order) * r)]
        cut = torch.quantile(ent[i], q)
        out[i] = ~sure & (ent[i] > cut) & (labels[i] != c)
    return out


def test_select_queries_percentile_entropy_matches_code_loop():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(3, 4, 30, generator=g) ** 2
    scores[1, 2] = 0  # a class missing from image 1
    labels = torch.cat([scores, torch.full_like(scores[:, :1], 0.1)], 1).argmax(1)
    got = select_queries(scores, labels, "percentile_entropy", 0.4, 0.6, 0.1, 0.1)
    assert got.any()
    assert torch.equal(got, _reference_percentile_entropy(scores, labels, 0.6, 0.1, 0.1))


# --- the prototype contrastive loss (Eq. 5, 7, 9) -------------------------------------------


def test_prototype_contrast_loss_hand_case_and_gradients():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], requires_grad=True)
    positives = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    keys = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    index = torch.tensor([[0, 1], [1, 1], [0, 0]])
    q_class = torch.tensor([4, 4, 7])
    loss = prototype_contrast_loss(queries, positives, keys, index, q_class, 2, tau=0.5)
    l1 = -math.log(math.e**2 / (math.e**2 + 1 + math.e**-2))  # logits (1, 0, -1) / 0.5
    l2 = math.log(3)  # logits (0, 0, 0)
    l3 = math.log(3)  # logits (1, 1, 1) / 0.5: q3 is normalised first
    assert loss.item() == pytest.approx(((l1 + l2) / 2 + l3) / 2, rel=1e-5)
    loss.backward()
    assert queries.grad.abs().sum() > 0
    assert positives.grad is None and keys.grad is None  # prototypes and keys are detached
    # |C_b| = 3 with one class lacking queries: that class adds 0 to the sum.
    three = prototype_contrast_loss(queries, positives, keys, index, q_class, 3, tau=0.5)
    assert three.item() == pytest.approx(((l1 + l2) / 2 + l3) / 3, rel=1e-5)
    empty = prototype_contrast_loss(
        queries[:0], positives[:0], keys, index[:0], q_class[:0], 2, 0.5
    )
    assert empty.item() == 0.0


def test_sampled_similarity_paths_agree():
    g = torch.Generator().manual_seed(0)
    q, index = torch.randn(5, 3, generator=g), torch.randint(0, 40, (5, 4), generator=g)
    keys = torch.randn(40, 3, generator=g)  # 40 > 4 * 3: gathers keys; 10 keys: full product
    direct = torch.einsum("qd,qmd->qm", q, keys[index])
    assert torch.allclose(sampled_similarity(q, keys, index), direct, atol=1e-6)
    small = index % 10
    assert torch.allclose(
        sampled_similarity(q, keys[:10], small), torch.einsum("qd,qmd->qm", q, keys[small])
    )


# --- batched K-means --------------------------------------------------------------------------


def test_kmeans_recovers_clusters_and_ignores_masked_pixels():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor(
        [[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], [[5.0, 5.0], [-8.0, 2.0], [3.0, -9.0]]]
    )
    pts = means.repeat_interleave(10, dim=1) + 0.1 * torch.randn(2, 30, 2, generator=g)
    x = torch.cat([pts, torch.full((2, 4, 2), 100.0)], dim=1)  # 4 outliers, masked out
    mask = torch.cat([torch.ones(2, 30), torch.zeros(2, 4)], dim=1).bool()
    centres, valid = batched_kmeans(x, mask, k=3, iters=10)
    assert valid.all()
    for i in range(2):
        found = sorted(centres[i].tolist())
        truth = sorted(pts[i].reshape(3, 10, 2).mean(1).tolist())
        assert torch.allclose(torch.tensor(found), torch.tensor(truth), atol=1e-4)
    again, _ = batched_kmeans(x, mask, k=3, iters=10)
    assert torch.equal(centres, again)  # deterministic initialisation


def test_kmeans_few_background_pixels_and_duplicates():
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6, 1)
    x[3] = torch.tensor([[1.0], [1.0], [1.0], [1.0], [1.0], [9.0]])
    mask = torch.tensor(
        [
            [0, 1, 0, 0, 1, 0],  # 2 bg pixels < k = 3: their raw features
            [0, 0, 0, 0, 0, 0],  # none: no NROI
            [1, 1, 1, 0, 0, 0],  # exactly k: raw features (code: KMeans only when n > k)
            [1, 1, 1, 1, 1, 1],  # 2 distinct values: one cluster stays empty -> invalid
        ]
    ).bool()
    centres, valid = batched_kmeans(x, mask, k=3, iters=5)
    assert valid.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 1, 0]]
    assert centres[0, :2, 0].tolist() == [1.0, 4.0]
    assert centres[2, :, 0].tolist() == [12.0, 13.0, 14.0]
    assert sorted(centres[3][valid[3]][:, 0].tolist()) == [1.0, 9.0]


# --- the NROI bank --------------------------------------------------------------------------


def test_bank_fifo_capacity_and_state():
    bank = NROIBank(4, 1)
    assert len(bank) == 0
    bank.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert bank.ordered().flatten().tolist() == [1, 2, 3] and len(bank) == 3
    bank.enqueue(torch.tensor([[4.0], [5.0]]))  # full: the oldest (1) is dequeued
    assert bank.ordered().flatten().tolist() == [2, 3, 4, 5] and len(bank) == 4
    assert int(bank.ptr) == 1
    bank.enqueue(torch.zeros(0, 1))
    assert bank.ordered().flatten().tolist() == [2, 3, 4, 5]
    bank.enqueue(torch.arange(6.0, 12.0)[:, None])  # more than the capacity: newest 4 stay
    assert bank.ordered().flatten().tolist() == [8, 9, 10, 11]
    restored = NROIBank(4, 1)
    restored.load_state_dict(bank.state_dict())
    assert restored.ordered().flatten().tolist() == [8, 9, 10, 11]
    index = bank.sample_index((50, 3))
    assert index.shape == (50, 3) and int(index.min()) >= 0 and int(index.max()) < 4


def test_bank_samples_only_filled_rows():
    bank = NROIBank(100, 2)
    bank.enqueue(torch.ones(3, 2))
    assert int(bank.sample_index((1000,)).max()) < 3
    assert bank.stored().shape == (3, 2)


# --- active negative sampling (Eq. 8) -------------------------------------------------------


def test_active_sampling_follows_the_class_graph():
    protos = F.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]), dim=1
    )  # class 1 = class 0, class 2 opposite, class 3 identical but not in the batch
    in_batch = torch.tensor([True, True, True, False])
    pixel_class = torch.tensor([0, 1, 1, 2, 4, 2, 1, 4, 0])  # 4 = bg
    g = torch.Generator().manual_seed(0)
    q_class = torch.zeros(400, dtype=torch.long)
    index = active_negative_index(protos, in_batch, q_class, pixel_class, 256, 0.5, g)
    assert index.shape == (400, 256)
    drawn = pixel_class[index]
    assert set(drawn.unique().tolist()) == {1, 2}  # never its own class, bg or an absent class
    w = math.e**2 / (math.e**2 + math.e**-2)  # softmax([1, -1] / 0.5)
    assert (drawn == 1).float().mean().item() == pytest.approx(w, abs=0.005)
    picks = index[drawn == 1]  # uniform over the three class-1 pixels
    share = torch.bincount(picks, minlength=9)[[1, 2, 6]].float() / picks.numel()
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.01)
    one = torch.tensor([True, False, False, False])
    assert active_negative_index(protos, one, q_class, pixel_class, 8, 0.5, g) is None


# --- the whole FBR step ---------------------------------------------------------------------


def _fake_outputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, c, d, s = 2, 3, 8, 6
    cams = torch.rand(b, c, s, s, generator=g) ** 3 * 4
    out = {
        "cams": cams,
        "z_fg": torch.rand(b, d, s, s, generator=g).requires_grad_(),
        "z_bg": torch.rand(b, d, s, s, generator=g).requires_grad_(),
        "bg_logits": torch.randn(b, 1, s, s, generator=g).requires_grad_(),
        "bg_hidden": torch.rand(b, d, s, s, generator=g).requires_grad_(),
    }
    return out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])


def _small_cfg(**kw) -> FBRConfig:
    return FBRConfig(contrast_size=0, n_clusters=2, n_negatives=16, prototype_topk_div=4, **kw)


def test_fbr_terms_fill_bank_first_and_train_queries():
    out, labels = _fake_outputs()
    bank = NROIBank(64, 8)
    terms = fbr_terms(out, labels, bank, _small_cfg(), torch.Generator().manual_seed(0))
    assert set(terms) == {"fb", "if", "bg_seg"}
    assert len(bank) > 0  # NROIs enqueued before the loss
    assert terms["fb"].item() > 0 and terms["if"].item() > 0
    (terms["fb"] + terms["if"]).backward()
    assert out["z_fg"].grad.abs().sum() > 0  # the paper: queries receive the gradient
    assert out["z_bg"].grad is None  # NROIs are detached: z_bg learns through L_seg only
    with_sim = fbr_terms(out, labels, NROIBank(64, 8), _small_cfg(lambda_sim=0.1))
    assert "sim" in with_sim


@pytest.mark.parametrize("term, flag", [("fb", "detach_fb_queries"), ("if", "detach_if_queries")])
def test_detached_query_options(term, flag):
    out, labels = _fake_outputs()
    terms = fbr_terms(out, labels, NROIBank(64, 8), _small_cfg(**{flag: True}))
    assert terms[term].item() > 0
    terms[term].backward()
    assert out["z_fg"].grad is not None  # still in the graph (DDP), with a zero gradient
    assert out["z_fg"].grad.abs().sum() == 0


def test_method_losses_through_the_network():
    method = FBR(_small_cfg(bank_size=32))
    net = method.build_model(StubBackbone(), 3).train()
    batch = {
        "image": torch.rand(2, 3, 24, 24) * 255,
        "labels": torch.tensor([[1.0, 1, 0], [0, 1, 1]]),
    }
    terms = method.losses(net, batch, None)
    assert set(terms) == {"cls", "fb", "if", "bg_seg"}
    sum(terms.values()).backward()
    assert net.proj_fg.weight.grad is not None and net.proj_bg.weight.grad is not None
    assert len(net.bank) > 0
    with pytest.raises(ValueError):
        FBR(FBRConfig(query_mode="hard")).build_model(StubBackbone(), 3)


def test_presets():
    from wsss.cli import build_config, build_parser

    paper = build_config(build_parser().parse_args(["fbr", "--preset", "paper"]))
    c = paper.cls
    assert (c.backbone.name, c.backbone.output_stride) == ("resnet38d", 8)
    assert (c.crop, c.batch_size, c.epochs, c.resize_long) == (448, 8, 15, (448, 768))
    assert (c.optim.lr, c.optim.head_lr_mult, c.optim.weight_decay) == (0.01, 10.0, 5e-4)
    assert c.optim.legacy_psa_momentum
    m = paper.method
    assert (m.bank_size, m.lambda_fb, m.lambda_if, m.lambda_seg) == (50_000, 0.1, 0.01, 0.01)
    assert (m.tau_fb, m.tau_if, m.n_clusters, m.n_negatives) == (0.5, 0.1, 8, 256)
    smoke = build_config(build_parser().parse_args(["fbr", "--preset", "smoke"]))
    assert smoke.method.bank_size == 4096


@pytest.mark.parametrize("host, supervision", [("cam", "I"), ("eps", "I+S")])
def test_smoke_end_to_end(tmp_path, cache_dir, host, supervision):
    from wsss.checkpoint import load_classifier
    from wsss.cli import main

    out = tmp_path / "run"
    args = [
        "fbr",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"method.host={host}",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("method", "seed_miou", "pseudo_miou", "seg_miou"):
        assert key in report
    assert report["method"] == "fbr" and report["supervision"] == supervision
    assert (out / "classifier.pt").is_file() and (out / "deeplab.pt").is_file()
    model, meta = load_classifier(out / "classifier.pt")
    assert isinstance(model, FBRNet) and meta["method"] == "fbr"
    assert len(model.bank) > 0  # the NROI bank travels in the checkpoint
    cams = model.cam(torch.rand(1, 3, 64, 64) * 255)
    assert cams.shape[1] == len(meta["class_names"]) - 1


# --- the EPS host (I+S) ----------------------------------------------------------------------


def test_eps_host_network_has_a_background_map_and_reads_classes_against_it():
    net = stub_net(host_cam_mode="bg_margin").eval()
    x = torch.rand(2, 3, 16, 16) * 255
    out = net(x)
    maps = out["cams_all"]
    assert maps.shape == (2, 4, 4, 4) and torch.equal(out["cams"], maps[:, :3])
    # TAP scores use the three class rows only; the background row is not a class score.
    w = net.classifier.weight[:3].flatten(1)
    assert torch.allclose(out["logits"], thresholded_average_pool(out["features"], 0.1) @ w.t())
    assert torch.allclose(net.cam(x), torch.sigmoid(maps[:, :3] - maps[:, 3:]), atol=1e-6)
    assert "cams_all" not in stub_net()(x)  # the plain host keeps C maps


def test_label_source_replaces_the_raw_cam_for_labels_and_background():
    out, labels = _fake_outputs()
    source = torch.zeros_like(out["cams"])
    source[:, :, :3] = 1.0  # the host map: every present class on the top half only
    terms = fbr_terms(out, labels, NROIBank(64, 8), _small_cfg(), label_source=source)
    # L_seg's target is background exactly on the bottom half: BCE against that hand target.
    target = torch.zeros(2, 1, 6, 6)
    target[:, :, 3:] = 1.0
    expected = F.binary_cross_entropy_with_logits(out["bg_logits"], target)
    assert torch.allclose(terms["bg_seg"], expected)
    raw = fbr_terms(out, labels, NROIBank(64, 8), _small_cfg())
    assert not torch.allclose(raw["bg_seg"], expected)


def test_eps_host_losses_take_the_saliency_and_label_from_the_host_map():
    from wsss.methods.base import StepInfo
    from wsss.methods.eps import EPSConfig, foreground_maps

    eps = EPSConfig(cam_mode="bg_margin", warmup_fraction=0.0, sal_weight=5.0)
    method = FBR(_small_cfg(bank_size=32, host="eps", eps=eps))
    assert method.uses_saliency and not FBR(_small_cfg()).uses_saliency
    net = method.build_model(StubBackbone(), 3).train()
    assert net.classifier.out_channels == 4
    batch = {
        "image": torch.rand(2, 3, 24, 24) * 255,
        "labels": torch.tensor([[1.0, 1, 0], [0, 1, 1]]),
        "saliency": torch.rand(2, 1, 24, 24),
    }
    terms = method.losses(net, batch, StepInfo(epoch=0, step=5, max_step=10))
    assert {"cls", "sal", "fb", "if", "bg_seg"} <= set(terms)
    assert terms["sal"].item() > 0
    sum(v for k, v in terms.items() if not k.startswith("_")).backward()
    assert net.classifier.weight.grad[3].abs().sum() > 0  # L_sal trains the background row
    maps = net(batch["image"])["cams_all"]
    assert torch.allclose(net.host_maps(maps), foreground_maps(maps, "bg_margin"))
    with pytest.raises(ValueError, match="unknown host"):
        FBR(FBRConfig(host="seam")).build_model(StubBackbone(), 3)
