"""Training health: the label-prior loss, CAM health, and a collapsed classifier caught in the
report and in the training log."""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss import health
from wsss.cli import main


def test_label_prior_loss_matches_a_hand_computation():
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])  # p = (0.75, 0.25)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats, both classes
    assert health.label_prior_loss(labels) == pytest.approx(entropy, abs=1e-12)
    assert health.label_prior_loss(labels) == pytest.approx(0.562335, abs=1e-6)
    # It is the multi-label soft margin loss of the constant prediction sigmoid(s_c) = p_c.
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    logits = torch.log(p / (1 - p)).expand(4, 2)
    target = torch.tensor(labels, dtype=torch.float64)
    loss = F.multilabel_soft_margin_loss(logits, target)
    assert health.label_prior_loss(labels) == pytest.approx(loss.item(), abs=1e-12)
    # A class that is always (or never) present costs nothing at the prior.
    assert health.label_prior_loss(np.array([[1, 0], [1, 0]])) == pytest.approx(0.0, abs=1e-9)


def test_cam_maxima_health_counts_images():
    labels = [np.array([1, 0, 0]), np.array([1, 1, 0]), np.array([0, 0, 1]), np.zeros(3)]
    maxima = [
        np.array([2.0, 1.0, 0.5]),  # present positive, absent below
        np.array([3.0, 0.0, 0.1]),  # second present class not positive; absent 0.1 > 0
        np.array([0.2, 0.1, 0.4]),  # healthy
        np.array([5.0, 5.0, 5.0]),  # no label: skipped
    ]
    h = health.cam_maxima_health(maxima, labels)
    assert h == {
        "images": 3,
        "present_cam_positive": round(2 / 3, 4),
        "absent_below_present": round(2 / 3, 4),
    }


def test_health_block_names_each_problem():
    good = health.health_block(
        0.2, 0.45, {"present_cam_positive": 1.0, "absent_below_present": 0.9}
    )
    assert good["healthy"] and good["problems"] == []
    bad = health.health_block(
        0.44, 0.45, {"present_cam_positive": 0.1, "absent_below_present": 0.3}
    )
    assert not bad["healthy"] and len(bad["problems"]) == 3
    assert "label prior" in bad["problems"][0] and "non-positive" in bad["problems"][1]


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("health") / "cam"
    args = ["cam", "--preset", "smoke", "--out", str(out), "--quiet"]
    assert main([*args, "--stages", "cls,cam,pseudo,eval", "--set", "cls.epochs=2"]) == 0
    return out


def test_report_has_a_health_block(healthy_run):
    report = json.loads((healthy_run / "report.json").read_text())
    block = report["health"]
    history = json.loads((healthy_run / "training.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert block["cls_loss_last_epoch"] == pytest.approx(
        history["epochs"][-1]["losses"]["cls"], abs=1e-4
    )
    assert 0.1 < block["label_prior_loss"] < 0.7  # 10 classes, 1-3 per image
    assert block["images"] == 24
    # Recomputed here from the CAM maxima the cam stage stored for every training image.
    maxima, labels = [], []
    for npz in sorted((healthy_run / "cams").glob("*.npz")):
        with np.load(npz) as data:
            maxima.append(data["maxima"])
            labels.append(np.isin(np.arange(1, 11), data["keys"]).astype(float))
    positive = np.mean([(m[lab > 0] > 0).all() for m, lab in zip(maxima, labels, strict=True)])
    assert block["present_cam_positive"] == pytest.approx(positive, abs=1e-4)
    assert block["healthy"] == (block["problems"] == [])


def test_a_collapsed_classifier_is_reported_unhealthy(healthy_run, tmp_path, caplog):
    """All CAM weights negative: every CAM is <= 0 on the (ReLU6, non-negative) features."""
    run = tmp_path / "collapsed"
    run.mkdir()
    checkpoint = torch.load(healthy_run / "classifier.pt", weights_only=False)
    weight = checkpoint["state_dict"]["classifier.weight"]
    checkpoint["state_dict"]["classifier.weight"] = -weight.abs() - 1e-3
    torch.save(checkpoint, run / "classifier.pt")
    (run / "training.json").write_text((healthy_run / "training.json").read_text())
    args = ["cam", "--preset", "smoke", "--out", str(run), "--quiet", "--stages", "cam,pseudo,eval"]
    with caplog.at_level(logging.WARNING, logger="wsss"):
        assert main(args) == 0
    block = json.loads((run / "report.json").read_text())["health"]
    assert block["present_cam_positive"] == 0.0 and block["absent_below_present"] == 0.0
    assert not block["healthy"]
    assert any("non-positive" in p for p in block["problems"])
    assert "unhealthy classifier" in caplog.text


def test_training_warns_when_the_loss_sits_at_the_label_prior(tmp_path, cache_dir, caplog):
    """lr 0: the network cannot leave its initialisation; its loss stays at the prior or above."""
    out = tmp_path / "frozen"
    args = ["cam", "--preset", "smoke", "--out", str(out), "--quiet", "--stages", "cls"]
    sets = ["--set", "cls.epochs=2", "--set", "cls.optim.lr=0"]
    with caplog.at_level(logging.WARNING, logger="wsss"):
        assert main([*args, *sets]) == 0
    assert "epoch 2: unhealthy classifier: classification loss" in caplog.text
    history = json.loads((out / "training.json").read_text())
    assert history["epochs"][1]["problems"]
