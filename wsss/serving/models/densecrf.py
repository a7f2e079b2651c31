"""``densecrf``: IMAGE uint8 [H, W, 3] + PROBS float32 [1, K, h, w] -> LABELS uint8 [H, W].

Dense CRF (:func:`wsss.refine.crf_select.dense_crf`) at the network resolution (h, w), with the
image resized to it, then the refined probabilities upsampled bilinearly to (H, W) and arg-maxed
in row chunks. Config parameters: ``preset`` (a key of ``CRF_PRESETS``, default ``deeplab``) and
any :class:`~wsss.refine.crf.CRFParams` field overriding it: ``iterations``,
``bilateral_srgb``, ..., ``impl`` (``pydensecrf``, the reference, or ``torch``) and ``device``;
``threads``: PyTorch's intra-op threads in each instance for ``impl: torch`` on CPU (default 1,
the server's ``OMP_NUM_THREADS``: instances x threads should not exceed the cores).
Request parameters: ``crf`` (default true; false = plain argmax of the network's probabilities)
and ``probabilities`` (default false; true adds PROBABILITIES float32 [K, h, w], the maps LABELS
is the argmax of).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np

from wsss.refine.crf import CRF_PRESETS, CRFParams
from wsss.refine.crf_select import check_impl, dense_crf
from wsss.serving.backend import PythonModel, RequestError, as_flag
from wsss.serving.imaging import resize_rgb
from wsss.serving.maps import upsample_argmax


def crf_params(parameters: dict[str, str]) -> CRFParams:
    """CRFParams from config parameters: a ``preset`` plus per-field overrides."""
    preset = parameters.get("preset") or "deeplab"
    if preset not in CRF_PRESETS:
        raise ValueError(f"unknown CRF preset {preset!r}; known: {sorted(CRF_PRESETS)}")
    params = CRF_PRESETS[preset]
    overrides = {}
    casts = {"iterations": int, "impl": check_impl, "device": str}
    for field in fields(CRFParams):
        if parameters.get(field.name):
            overrides[field.name] = casts.get(field.name, float)(parameters[field.name])
    return replace(params, **overrides)


def known_parameters() -> list[str]:
    """The config parameters this model reads."""
    return ["preset", "threads", *(field.name for field in fields(CRFParams))]


def torch_threads(parameters: dict[str, str]) -> int | None:
    """The ``threads`` config parameter as a positive int; None when unset (keep the default)."""
    value = parameters.get("threads") or ""
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"densecrf parameter threads must be a positive integer, got {value!r}")
    return int(value)


def model_settings(parameters: dict[str, str]) -> tuple[CRFParams, int | None]:
    """(CRF settings, torch threads) from config parameters, as the model reads them."""
    return crf_params(parameters), torch_threads(parameters)


def refine_labels(
    image: np.ndarray, probs: np.ndarray, params: CRFParams | None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 [H, W], probabilities [K, h, w]) from the image and network probabilities.

    ``params`` None skips the CRF. The CRF runs at the probabilities' resolution.
    """
    k, h, w = probs.shape
    if params is not None and params.iterations > 0:
        small = resize_rgb(image, (h, w))
        if not small.flags.writeable:  # pydensecrf needs a writable buffer
            small = small.copy()
        probs = dense_crf(small, probs, params)
    return upsample_argmax(probs, image.shape[:2]), np.asarray(probs, dtype=np.float32)


class TritonPythonModel(PythonModel):
    name = "densecrf"

    def setup(self, parameters: dict[str, str]) -> None:
        self.params, threads = model_settings(parameters)
        if self.params.impl == "torch" and threads is not None:
            import torch

            torch.set_num_threads(threads)  # this instance's own process

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        image, probs = inputs["IMAGE"], inputs["PROBS"]
        if probs.ndim == 4:
            if probs.shape[0] != 1:
                raise RequestError(f"PROBS must hold one image, got shape {probs.shape}")
            probs = probs[0]
        if probs.ndim != 3 or image.ndim != 3:
            raise RequestError(f"bad shapes: IMAGE {image.shape}, PROBS {probs.shape}")
        use_crf = as_flag(params.get("crf", True), "crf")
        labels, refined = refine_labels(image, probs, self.params if use_crf else None)
        outputs = {"LABELS": labels}
        if as_flag(params.get("probabilities", False), "probabilities"):
            outputs["PROBABILITIES"] = refined
        return outputs
