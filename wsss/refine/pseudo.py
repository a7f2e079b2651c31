"""Normalised CAMs -> pseudo masks: threshold or dense CRF, with confidence-based ignore regions."""

from __future__ import annotations

import numpy as np

from wsss.cam import cams_to_labels
from wsss.constants import IGNORE_INDEX
from wsss.refine.crf import CRFParams
from wsss.refine.crf_select import dense_crf_labels


def _refine(
    image: np.ndarray, labels: np.ndarray, keys: np.ndarray, crf: CRFParams | None, gt_prob: float
) -> np.ndarray:
    """CRF on a label map restricted to {0} + keys (IRN ``crf_inference_label``)."""
    if crf is None or len(keys) == 0:
        return labels
    local_ids = np.concatenate([[0], np.asarray(keys)])
    to_local = np.zeros(int(local_ids.max()) + 1, dtype=np.int64)
    to_local[local_ids] = np.arange(len(local_ids))
    refined = dense_crf_labels(image, to_local[labels], len(local_ids), crf, gt_prob)
    return local_ids[refined]


def pseudo_mask(
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    *,
    bg_threshold: float,
    crf: CRFParams | None = None,
    crf_gt_prob: float = 0.7,
    ignore_uncertain: bool = False,
    conf_fg: float = 0.30,
    conf_bg: float = 0.05,
) -> np.ndarray:
    """A pseudo mask uint8 [H, W] (0 bg, k class, 255 ignore) from normalised CAMs [K, H, W].

    Without ``ignore_uncertain``: labels at ``bg_threshold``, CRF-refined when ``crf`` is given.
    With it (IRN ``cam_to_ir_label``): a confident-foreground map at ``conf_fg`` and a
    confident-background map at ``conf_bg``, each CRF-refined; foreground where the first says
    so, background where the second says background, 255 where they disagree.
    """
    if not ignore_uncertain:
        labels = _refine(image, cams_to_labels(cams, keys, bg_threshold), keys, crf, crf_gt_prob)
        return labels.astype(np.uint8)
    fg = _refine(image, cams_to_labels(cams, keys, conf_fg), keys, crf, crf_gt_prob)
    bg = _refine(image, cams_to_labels(cams, keys, conf_bg), keys, crf, crf_gt_prob)
    mask = np.full(fg.shape, IGNORE_INDEX, dtype=np.uint8)
    mask[bg == 0] = 0
    mask[fg > 0] = fg[fg > 0]
    return mask
