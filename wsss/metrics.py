"""Segmentation metrics from a confusion matrix (numpy only)."""

from __future__ import annotations

import numpy as np

from wsss.constants import IGNORE_INDEX


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, n_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts [n_classes, n_classes] (rows: ground truth, columns: prediction).

    Pixels whose ground truth is ``ignore_index`` are skipped; predictions outside
    [0, n_classes) (for example 255 in a pseudo mask) count as background (IRN's rule).
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    valid = (gt != ignore_index) & (gt >= 0) & (gt < n_classes)
    pred = np.where((pred >= 0) & (pred < n_classes), pred, 0)
    index = gt[valid] * n_classes + pred[valid]
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class, [n_classes]; NaN for a class absent from both GT and prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes that occur (``nanmean``), as a fraction in [0, 1]."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


class SegmentationMeter:
    """Accumulates a confusion matrix over images; ``summary()`` gives mIoU and per-class IoU."""

    def __init__(self, class_names: tuple[str, ...] | list[str]):
        self.class_names = tuple(class_names)
        n = len(self.class_names)
        self.conf = np.zeros((n, n), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.conf += confusion_matrix(gt, pred, len(self.class_names))

    def miou(self) -> float:
        return mean_iou(self.conf)

    def summary(self) -> dict:
        """{"miou": percent, "per_class": {name: percent or None}, "pixel_accuracy": percent}."""
        iou = iou_per_class(self.conf)
        total = self.conf.sum()
        return {
            "miou": round(100 * self.miou(), 2),
            "pixel_accuracy": round(100 * np.trace(self.conf) / total, 2) if total else None,
            "per_class": {
                name: (None if np.isnan(v) else round(100 * float(v), 2))
                for name, v in zip(self.class_names, iou, strict=True)
            },
        }
