import numpy as np
import pytest

from wsss.metrics import SegmentationMeter, confusion_matrix, iou_per_class, mean_iou


def brute_force_iou(gt, pred, n):
    ious = []
    for c in range(n):
        valid = gt != 255
        p = (pred == c) & valid
        g = (gt == c) & valid
        union = (p | g).sum()
        ious.append(np.nan if union == 0 else (p & g).sum() / union)
    return np.array(ious)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 5
    gt = rng.integers(0, n, size=(40, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, n - 1, size=(40, 30))  # class n-1 never predicted
    conf = confusion_matrix(gt, pred, n)
    assert conf.sum() == (gt != 255).sum()
    np.testing.assert_allclose(iou_per_class(conf), brute_force_iou(gt, pred, n))
    assert mean_iou(conf) == pytest.approx(np.nanmean(brute_force_iou(gt, pred, n)))


def test_absent_class_is_nan_and_skipped():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 0], [1, 0]])
    iou = iou_per_class(confusion_matrix(gt, pred, 3))
    assert np.isnan(iou[2])
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 2)
    assert mean_iou(confusion_matrix(gt, pred, 3)) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_prediction_255_counts_as_background():
    gt = np.array([1, 0])
    pred = np.array([255, 255])
    conf = confusion_matrix(gt, pred, 2)
    assert conf.tolist() == [[1, 0], [1, 0]]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_meter_accumulates_and_summarises():
    meter = SegmentationMeter(("background", "a"))
    meter.update(np.array([0, 1]), np.array([0, 1]))
    meter.update(np.array([1, 1]), np.array([0, 1]))
    s = meter.summary()
    assert s["per_class"]["a"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert s["per_class"]["background"] == 50.0
    assert s["pixel_accuracy"] == 75.0
