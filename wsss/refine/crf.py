"""Dense CRF post-processing with pydensecrf2 (Krähenbühl and Koltun, 2011).

Imports numpy and pydensecrf only (never torch): the Triton ``densecrf`` Python backend uses it.
The named presets are the ones the WSSS code bases use (specs/anchors-wsss.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings: a Gaussian (smoothness) and a bilateral (appearance) kernel."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 10
    # Who runs it (wsss.refine.crf_select): "pydensecrf" (pydensecrf2, the reference) or "torch"
    # (wsss.refine.crf_torch, the same permutohedral filter in tensor ops) on ``device``
    # ("auto": CUDA when available). The functions of this module always run pydensecrf2.
    impl: str = "pydensecrf"
    device: str = "auto"


CRF_PRESETS: dict[str, CRFParams] = {
    # PSA/SEAM CAM -> label CRF (tool/imutils.crf_inference): G(3, 3), B(80, 13, 10), t = 10.
    "psa": CRFParams(3.0, 3.0, 80.0, 13.0, 10.0, 10),
    # IRN IR-label CRF (misc/imutils.crf_inference_label, gt_prob 0.7): G(3, 3), B(50, 5, 10).
    "irn": CRFParams(3.0, 3.0, 50.0, 5.0, 10.0, 10),
    # DeepLab v2 post-processing (deeplab-pytorch configs/voc12.yaml): G(1, 3), B(67, 3, 4).
    "deeplab": CRFParams(1.0, 3.0, 67.0, 3.0, 4.0, 10),
}


def _crf(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field inference; image uint8 [H, W, 3], unary float32 [K, H*W] -> probs [K, H, W]."""
    import pydensecrf.densecrf as dcrf

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"CRF needs a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    n_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C"),  # a writable copy (pydensecrf needs one)
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


UNARY_CLIP = 1e-8  # probabilities are clipped here before -log


def unary_from_probs(probs: np.ndarray) -> np.ndarray:
    """pydensecrf ``unary_from_softmax``: -log(clip(p, 1e-8, 1)), float32 [..., K, H, W]."""
    return -np.log(np.clip(probs.astype(np.float32), UNARY_CLIP, 1.0))


def unary_from_labels(labels: np.ndarray, n_labels: int, gt_prob: float) -> np.ndarray:
    """pydensecrf ``unary_from_labels(zero_unsure=False)``: labels int [H, W] -> float32
    [K, H, W]; the given label gets probability ``gt_prob``, the others share the rest equally."""
    h, w = labels.shape
    rest = (1.0 - gt_prob) / max(n_labels - 1, 1)
    probs = np.full((n_labels, h * w), rest, dtype=np.float32)
    probs[labels.reshape(-1), np.arange(h * w)] = gt_prob
    return -np.log(probs).reshape(n_labels, h, w)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refines class probabilities; image uint8 [H, W, 3], probs [K, H, W] -> probs [K, H, W].

    The unary is -log(p) (pydensecrf ``unary_from_softmax``). The image must be the raw RGB
    photograph, not the mean-subtracted network input (the deeplab-pytorch ``astype(uint8)`` slip).
    """
    return _crf(image, unary_from_probs(probs).reshape(probs.shape[0], -1), params)


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    params: CRFParams,
    gt_prob: float = 0.7,
) -> np.ndarray:
    """Refines a hard label map (IRN ``crf_inference_label``); labels int [H, W] -> int [H, W].

    The unary is :func:`unary_from_labels`.
    """
    unary = unary_from_labels(labels, n_labels, gt_prob).reshape(n_labels, -1)
    return _crf(image, unary, params).argmax(0).astype(labels.dtype)
