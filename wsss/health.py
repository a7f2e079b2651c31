"""Is a classification network learning, and do its CAMs point at the labelled classes?

A WSSS classifier can fail without an error: it settles at the *label prior* (it ignores the
image and scores every class at its training frequency, so the loss stops falling) or its
present-class CAMs go non-positive (ReLU'd maps, hence seeds and pseudo masks, become empty).
Both only showed up as a low mIoU at the end of a long run. Three figures catch them early:

* the classification loss against the label prior: the multi-label soft margin loss of a
  constant prediction sigmoid(s_c) = p_c, which is the mean binary entropy of the class
  frequencies, mean_c -(p_c log p_c + (1 - p_c) log(1 - p_c)) (nats);
* the fraction of images whose every present class has a positive CAM maximum;
* the fraction of images whose absent-class CAM maxima all lie below every present-class one.

The classification stage logs them after every epoch on a few training images (and warns);
the cam stage stores each image's CAM maxima, from which the report's ``health`` block is
computed over the whole training split. numpy only, except :func:`probe_cam_health`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

log = logging.getLogger("wsss")

# A loss above this fraction of the label prior has learned (next to) nothing.
PRIOR_FRACTION = 0.95
# "Most images": below this fraction of images with a positive present-class CAM, or with the
# present classes above the absent ones, the CAMs no longer localise the labels.
MIN_IMAGE_FRACTION = 0.5
# Images the classification stage probes after every epoch (unaugmented, one scale).
PROBE_IMAGES = 32


def label_prior_loss(labels: np.ndarray) -> float:
    """Multi-label soft margin loss of the constant prediction sigmoid(s_c) = p_c.

    labels: {0, 1} [N, C] image-level labels of the training set; p_c = labels.mean(0).
    Equals mean over images and classes of -(y log p + (1 - y) log(1 - p)) at that prediction,
    i.e. the mean binary entropy of the class frequencies. Classes that are always or never
    present contribute 0.
    """
    return prior_from_frequencies(np.asarray(labels, dtype=np.float64).mean(axis=0))


def prior_from_frequencies(p: np.ndarray) -> float:
    """:func:`label_prior_loss` from the class frequencies p [C] in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    entropy = -(p * np.log(q) + (1 - p) * np.log(1 - q))
    return float(entropy.mean())


def cam_maxima_health(maxima: Iterable[np.ndarray], labels: Iterable[np.ndarray]) -> dict:
    """Fractions of images with healthy CAMs.

    maxima: per image, float [C] maximum of each class's CAM (all classes, before any
    normalisation); labels: per image, {0, 1} [C]. Images without a label are skipped.
    Returns {"images", "present_cam_positive", "absent_below_present"}, fractions in [0, 1].
    """
    n = positive = separated = 0
    for top, label in zip(maxima, labels, strict=True):
        present = np.asarray(label) > 0.5
        if not present.any():
            continue
        top = np.asarray(top, dtype=np.float64)
        n += 1
        positive += bool((top[present] > 0).all())
        lowest_present = top[present].min()
        separated += bool((top[~present] < lowest_present).all())
    frac = (lambda k: round(k / n, 4)) if n else (lambda k: None)
    return {
        "images": n,
        "present_cam_positive": frac(positive),
        "absent_below_present": frac(separated),
    }


def problems(
    cls_loss: float | None, prior: float | None, cams: dict, separation: bool = True
) -> list[str]:
    """What is wrong with a classifier, in words; empty when it is healthy.

    ``separation``: also require the present classes to outscore the absent ones on most
    images (the trained classifier's report; during training, absent classes still fire on
    most images for the first epochs of a healthy run).
    """
    found = []
    if cls_loss is not None and prior and cls_loss >= PRIOR_FRACTION * prior:
        found.append(
            f"classification loss {cls_loss:.4f} is at the label prior {prior:.4f} "
            "(the network ignores the image)"
        )
    positive = cams.get("present_cam_positive")
    if positive is not None and positive < MIN_IMAGE_FRACTION:
        found.append(
            f"present-class CAMs are non-positive on {100 * (1 - positive):.0f} % of images "
            "(empty seeds)"
        )
    separated = cams.get("absent_below_present")
    if separation and separated is not None and separated < MIN_IMAGE_FRACTION:
        found.append(
            f"absent classes outscore a present one on {100 * (1 - separated):.0f} % of images"
        )
    return found


def health_block(cls_loss: float | None, prior: float | None, cams: dict) -> dict:
    """The ``health`` block of ``report.json``."""
    found = problems(cls_loss, prior, cams)
    return {
        "cls_loss_last_epoch": None if cls_loss is None else round(cls_loss, 4),
        "label_prior_loss": None if prior is None else round(prior, 4),
        **cams,
        "healthy": not found,
        "problems": found,
    }


def probe_cam_health(model, images: list, labels: list[np.ndarray]) -> dict:
    """:func:`cam_maxima_health` of ``model.cam`` on a few images, one scale, no flip.

    images: float tensors [3, H, W] in 0..255 (sizes may differ), on the model's device;
    labels: {0, 1} [C] each. The model is put in eval mode for the probe and returned to the
    mode it was in.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        maxima = [model.cam(x[None]).amax(dim=(2, 3))[0].float().cpu().numpy() for x in images]
    model.train(was_training)
    return cam_maxima_health(maxima, labels)


def warn_if_unhealthy(
    desc: str, epoch: int, cls_loss: float | None, prior: float | None, cams: dict
) -> list[str]:
    """Logs a warning for each problem found after ``epoch`` (1-based); the first is warm-up.

    Checked: the loss at the label prior and non-positive present-class CAMs (the separation of
    present from absent classes is left to the final report)."""
    if epoch < 2:
        return []
    found = problems(cls_loss, prior, cams, separation=False)
    for problem in found:
        log.warning("%s epoch %d: unhealthy classifier: %s", desc, epoch, problem)
    return found
