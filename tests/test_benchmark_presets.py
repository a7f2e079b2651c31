"""The benchmark presets (default, gpu) adapt each method's scale-bound constants; paper keeps
the papers' values."""

import pytest

from wsss.cli import build_config, build_parser


def config(method: str, preset: str):
    args = [method, "--preset", preset] + (["--data", "voc", "--root", "x"] * (preset == "paper"))
    return build_config(build_parser().parse_args(args))


@pytest.mark.parametrize("preset", ["default", "gpu"])
def test_benchmark_presets_adapt_each_method(preset):
    ktse = config("ktse", preset).method
    assert (ktse.score, ktse.handover_cam_positive, ktse.ramp_fraction) == ("gap", 0.9, 0.5)
    assert ktse.global_detach_anchor and ktse.dead_class == "ignore"
    assert ktse.par_dilations == (1, 2, 3, 5, 10)  # (1..24) x 128 / 320
    # MGA erases a part of the object, not the 16 x 16 blob; L_global on class probabilities
    assert (ktse.erase_threshold, ktse.global_space) == (0.8, "probability")
    assert (ktse.beta_h, ktse.beta_l) == (0.7, 0.5)  # SSR's band = the pseudo masks' band
    ecs = config("ecs", preset).method
    assert (ecs.pro_weight, ecs.infer_map, ecs.beta, ecs.head_dropout) == (0.0, "cam", 1.0, 0.0)
    assert ecs.dilations == (1, 2, 3)
    eps = config("eps", preset).method
    assert (eps.binarize, eps.sal_weight, eps.warmup_fraction, eps.cam_mode) == (
        "relative",
        5.0,
        0.25,
        "bg_margin",
    )
    fbr = config("fbr", preset).method
    # FBR on the EPS host: EPS's own benchmark settings, its contrast labels' thresholds moved
    # with EPS's seed threshold (0.30 -+ 0.1), GAP as EPS scores, no score bias.
    assert (fbr.host, fbr.pooling, fbr.eps, fbr.bg_score, fbr.query_threshold) == (
        "eps",
        "gap",
        eps,
        0.2,
        0.4,
    )
    assert not config("fbr", preset).cls.score_bias
    assert not config("cam", preset).cls.score_bias  # the baseline stays the papers' classifier
    cpn = config("cpn", preset).method
    # the paper's superpixels at the paper's size in pixels: S_N 200 at 448 px -> 16 at 128 px
    assert (cpn.strategy, cpn.n_segments, cpn.cam_dropout) == ("superpixel", 16, 0.0)
    assert not cpn.infer_refined
    assert cpn.w_cls == 3.0  # the triplet's mean L_cls made a sum (160 steps, not 21,160)
    assert (cpn.warmup_fraction, cpn.handover_cam_positive) == (0.25, 0.9)  # baseline first


@pytest.mark.parametrize("preset", ["default", "gpu"])
def test_seed_threshold_is_shared_unless_a_method_reads_off_its_own(preset):
    thresholds = {
        m: (c.cam.bg_threshold, c.pseudo.conf_fg, c.pseudo.conf_bg)
        for m in ("cam", "ktse", "cpn", "ecs", "eps", "fbr")
        for c in [config(m, preset)]
    }
    for method in ("cam", "ktse", "cpn", "ecs"):
        assert thresholds[method] == (0.6, 0.7, 0.5)
    # EPS's map is class against its learned background; FBR reads its EPS host's map.
    assert thresholds["eps"] == thresholds["fbr"] == (0.3, 0.4, 0.2)


def test_paper_preset_keeps_the_papers_constants():
    ktse = config("ktse", "paper").method
    assert ktse.score == "gpp" and ktse.handover_cam_positive == 0.0 and ktse.ramp_fraction == 0
    assert not ktse.global_detach_anchor and ktse.par_dilations == (1, 2, 4, 8, 12, 24)
    assert (ktse.erase_threshold, ktse.global_space, ktse.beta_h, ktse.beta_l) == (
        0.6,
        "gap",
        0.30,
        0.15,
    )
    ecs = config("ecs", "paper").method
    assert (ecs.pro_weight, ecs.infer_map, ecs.beta, ecs.dilations) == (
        1.0,
        "refined",
        0.5,
        (5, 7, 12),
    )
    eps = config("eps", "paper").method
    assert (eps.binarize, eps.sal_weight, eps.warmup_fraction, eps.cam_mode) == (
        "absolute",
        1.0,
        0.0,
        "softmax",
    )
    fbr = config("fbr", "paper").method
    assert (fbr.bg_score, fbr.query_threshold) == (0.10, 0.4)
    assert not config("fbr", "paper").cls.score_bias
    assert config("eps", "paper").cam.bg_threshold == 0.20  # infer.py's constant background
    eps_paper = config("eps", "paper")
    assert eps_paper.affinity.labels == "pseudo" and eps_paper.method.overlap_eps_per_pixel
    assert not config("eps", "default").method.overlap_eps_per_pixel
    assert (eps_paper.cls.saliency_resize, config("eps", "default").cls.saliency_resize) == (
        "bicubic",
        "nearest",
    )
    assert (
        config("cam", "paper").cls.hue_jitter == 0.1 and config("ktse", "paper").cls.hue_jitter == 0
    )
    assert config("cam", "default").cls.hue_jitter == 0  # class colours 13 degrees apart
    assert config("cam", "paper").affinity.optim.legacy_psa_momentum
    assert config("cam", "paper").affinity.init == "imagenet"
    assert config("cam", "default").affinity.init == "classifier"
    for method in ("cam", "ktse", "fbr", "cpn", "ecs", "eps"):  # psa's not_training stem
        assert config(method, "paper").cls.backbone.freeze_stem
        assert not config(method, "default").cls.backbone.freeze_stem
    cpn = config("cpn", "paper").method
    assert cpn.strategy == "superpixel" and cpn.cam_dropout == 0.5 and cpn.infer_refined
    assert cpn.w_cls == 1.0
    assert (cpn.warmup_fraction, cpn.handover_cam_positive) == (0.0, 0.0)  # triplet from step 0


def test_gpu_preset_is_the_benchmark_at_a_larger_size():
    gpu, default = config("cam", "gpu"), config("cam", "default")
    assert gpu.data.synthetic_size == default.data.synthetic_size == 128
    assert (gpu.data.synthetic_train, gpu.cls.epochs, gpu.crf.impl) == (1200, 16, "torch")
    assert gpu.cam.bg_threshold == default.cam.bg_threshold == 0.6
    # past the start-up phase of the first steps: 32 epochs (640 steps) on the CPU
    assert (default.cls.epochs, config("ktse", "default").cls.epochs) == (32, 32)
