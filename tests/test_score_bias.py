"""cls.score_bias: a per-class bias on the pooled scores, set to the label prior's log-odds."""

import json
import math

import numpy as np
import torch
from stubs import StubBackbone
from torch import nn

from wsss import health
from wsss.checkpoint import SCORE_BIAS_KEY, load_classifier, make_backbone, save_checkpoint
from wsss.cli import main
from wsss.config import BackboneConfig, RunConfig
from wsss.methods.cam import classification_loss
from wsss.methods.eps import EPSNet
from wsss.methods.fbr_modules import FBRNet
from wsss.models.cam_net import CamNet
from wsss.trainer import build_optimizer

FREQUENCIES = torch.tensor([0.5, 0.2, 0.1])


def test_bias_is_the_log_odds_and_enters_the_scores_not_the_maps():
    torch.manual_seed(0)
    net = CamNet(StubBackbone(), 3)
    x = torch.rand(2, 3, 16, 16) * 255
    before = net(x)
    net.enable_score_bias(FREQUENCIES)
    expected = [math.log(p / (1 - p)) for p in FREQUENCIES.tolist()]
    assert net.score_bias.bias.tolist() == torch.tensor(expected).tolist()
    after = net(x)
    torch.testing.assert_close(after["cams"], before["cams"])
    torch.testing.assert_close(after["logits"], before["logits"] + net.score_bias.bias)
    torch.testing.assert_close(net.cam(x), torch.relu(before["cams"]))


def test_zero_maps_plus_bias_score_the_label_prior():
    """With every map at zero, the loss is the label prior's (hand-computed in wsss.health)."""
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    frequencies = torch.from_numpy(labels.mean(axis=0))
    net = CamNet(StubBackbone(), 3)
    nn.init.zeros_(net.classifier.weight)
    net.enable_score_bias(frequencies)
    logits = net(torch.rand(5, 3, 16, 16) * 255)["logits"]
    loss = classification_loss(logits, torch.from_numpy(labels)).item()
    assert abs(loss - health.label_prior_loss(labels)) < 1e-6
    assert abs(loss - math.log(2)) > 0.1  # a bias-free zero map would score log 2


def test_method_networks_add_the_bias_to_their_own_scores():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 255
    for net in (FBRNet(StubBackbone(), 3, proj_dim=4, bank_size=8), EPSNet(StubBackbone(), 3)):
        net.eval()
        plain = net(x)["logits"]
        net.enable_score_bias(FREQUENCIES)
        torch.testing.assert_close(net(x)["logits"], plain + net.score_bias.bias)


def test_bias_trains_with_the_new_layers():
    net = CamNet(StubBackbone(), 3)
    net.enable_score_bias(FREQUENCIES)
    assert net.score_bias in net.new_modules()
    optimizer = build_optimizer(net, RunConfig().cls.optim)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(net.score_bias.bias)] == lrs[id(net.classifier.weight)]
    assert lrs[id(net.score_bias.bias)] > lrs[id(net.backbone.conv.weight)]


def test_checkpoint_round_trip_keeps_the_bias(tmp_path):
    cfg = RunConfig()
    cfg.cls.backbone = BackboneConfig(pretrained="none", frozen_bn=False)
    torch.manual_seed(0)
    net = CamNet(make_backbone(cfg.cls.backbone), 3)
    net.enable_score_bias(FREQUENCIES)
    with torch.no_grad():
        net.score_bias.bias.add_(0.25)
    save_checkpoint(tmp_path / "classifier.pt", net, "classifier", cfg, ("bg", "a", "b", "c"))
    loaded, _ = load_classifier(tmp_path / "classifier.pt")
    torch.testing.assert_close(loaded.score_bias.bias, net.score_bias.bias)
    x = torch.rand(1, 3, 32, 32) * 255
    net.eval()
    torch.testing.assert_close(loaded(x)["logits"], net(x)["logits"])
    assert SCORE_BIAS_KEY in loaded.state_dict()


def test_training_starts_the_bias_at_the_label_prior(tmp_path, cache_dir):
    """lr 0 keeps the initial bias: its classes' prior loss is the one the training log reports."""
    out = tmp_path / "biased"
    args = ["cam", "--preset", "smoke", "--out", str(out), "--quiet", "--stages", "cls"]
    sets = ["--set", "cls.epochs=1", "--set", "cls.optim.lr=0", "--set", "cls.score_bias=true"]
    assert main([*args, *sets]) == 0
    model, _ = load_classifier(out / "classifier.pt")
    frequencies = torch.sigmoid(model.score_bias.bias.detach().double()).numpy()
    logged = json.loads((out / "training.json").read_text())["label_prior_loss"]
    assert abs(health.prior_from_frequencies(frequencies) - logged) < 1e-4
