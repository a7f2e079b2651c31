"""Dense CRF with a choice of implementation: ``pydensecrf`` (the reference) or ``torch``.

The numpy functions have the signatures of :mod:`wsss.refine.crf` plus ``impl`` and ``device``
(default: the ``CRFParams``' own ``impl`` and ``device``, which ``--set crf.impl=torch`` sets for
a whole run) and build the unary exactly as it does, so both implementations see the same
float32 input. Every CRF of the pipeline (pseudo masks, AffinityNet labels, DeepLab
post-processing) and the Triton ``densecrf`` model go through here.
torch is imported only for ``impl="torch"``: with the default this module, like ``crf.py``,
needs numpy and pydensecrf only (Triton Python backends import it).

``impl="torch"`` runs :mod:`wsss.refine.crf_torch` on ``device`` ("auto": CUDA when available,
else CPU). :func:`dense_crf_batch` refines a batch of same-size images in one call: on a GPU
one lattice build and one sparse product per step for the whole batch, on CPU image by image
sharing the per-size Gaussian lattice (measured faster there than one big lattice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from wsss.refine import crf as reference
from wsss.refine.crf import CRFParams, unary_from_labels, unary_from_probs

if TYPE_CHECKING:
    import torch

CRF_IMPLS = ("pydensecrf", "torch")


def _pick(params: CRFParams, impl: str | None, device: str | None) -> tuple[str, str]:
    """(impl, device): the arguments where given, else the params' own."""
    return check_impl(impl or params.impl), device or params.device


def check_impl(impl: str) -> str:
    """``impl`` if it names a CRF implementation, else ValueError listing the known ones."""
    if impl not in CRF_IMPLS:
        raise ValueError(f"unknown CRF implementation {impl!r}; known: {list(CRF_IMPLS)}")
    return impl


def resolve_device(device: str | None) -> torch.device:
    """ "auto" / None -> CUDA when available, else CPU; anything else as torch.device."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _torch_crf(
    images: np.ndarray, unary: np.ndarray, params: CRFParams, device: str | None
) -> np.ndarray:
    """images uint8 [B, H, W, 3], unary float32 [B, K, H, W] -> probs float32 [B, K, H, W]."""
    import torch

    from wsss.refine.crf_torch import dense_crf_unary

    dev = resolve_device(device)
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(dev)  # W: read-only
    u = torch.from_numpy(np.require(unary, np.float32, ["C", "W"])).to(dev)  # arrays warn
    return dense_crf_unary(x, u, params).cpu().numpy()


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    params: CRFParams,
    impl: str | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Refines class probabilities: image uint8 [H, W, 3], probs [K, H, W] -> probs [K, H, W].

    See :func:`wsss.refine.crf.dense_crf`; ``impl`` picks the implementation.
    """
    impl, device = _pick(params, impl, device)
    if impl == "pydensecrf":
        return reference.dense_crf(image, probs, params)
    return _torch_crf(image[None], unary_from_probs(probs)[None], params, device)[0]


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    params: CRFParams,
    gt_prob: float = 0.7,
    impl: str | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Refines a hard label map: labels int [H, W] -> int [H, W] (IRN ``crf_inference_label``).

    See :func:`wsss.refine.crf.dense_crf_labels`; ``impl`` picks the implementation.
    """
    impl, device = _pick(params, impl, device)
    if impl == "pydensecrf":
        return reference.dense_crf_labels(image, labels, n_labels, params, gt_prob)
    unary = unary_from_labels(labels, n_labels, gt_prob)
    q = _torch_crf(image[None], unary[None], params, device)[0]
    return q.argmax(0).astype(labels.dtype)


def dense_crf_batch(
    images: np.ndarray,
    probs: np.ndarray,
    params: CRFParams,
    impl: str = "torch",
    device: str | None = None,
) -> np.ndarray:
    """A batch: images uint8 [B, H, W, 3], probs [B, K, H, W] -> probs float32 [B, K, H, W].

    ``torch`` (the default here: batching is what it is for) refines the whole batch at once;
    ``pydensecrf`` loops over the images.
    """
    impl, device = _pick(params, impl, device)
    if impl == "pydensecrf":
        pairs = zip(images, probs, strict=True)
        return np.stack([reference.dense_crf(i, p, params) for i, p in pairs])
    return _torch_crf(images, unary_from_probs(probs), params, device)
