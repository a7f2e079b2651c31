"""``densecrf``: IMAGE uint8 [H, W, 3] + PROBS float32 [1, K, h, w] -> LABELS uint8 [H, W].

Dense CRF (:func:`wsss.refine.crf_select.dense_crf`) at the network resolution (h, w) capped
to ``max_side`` (then, like the network, at (h, w) scaled down to a longest side of
``max_side`` with the probabilities resized bilinearly and both kernels' ``sxy`` scaled by the
same factor, so they cover the same part of the picture), on the image resized to it; the
refined probabilities are upsampled bilinearly to (H, W) and arg-maxed in row chunks.
Config parameters: ``preset`` (a key of ``CRF_PRESETS``, default ``deeplab``) and any
:class:`~wsss.refine.crf.CRFParams` field overriding it (``iterations``, ``bilateral_srgb``,
...); ``impl`` (``pydensecrf``, ``torch`` or ``auto``), ``device`` (``cpu``, ``cuda`` or
``auto``) and ``threads`` (torch's intra-op threads in this instance, a count or ``auto``),
where ``auto`` is :func:`wsss.serving.crf_layout.choose_layout`'s pick for this host and this
instance; ``instances`` (a count or ``auto``) is read by the repository tools, which write the
config's instance count (:func:`wsss.export.ensembles.fit_densecrf`); ``max_side`` (0: no cap).
Request parameters: ``crf`` (default true; false = plain argmax of the network's probabilities)
and ``probabilities`` (default false; true adds PROBABILITIES float32 [K, h', w'], the maps LABELS
is the argmax of, at the CRF's resolution, or the network's without the CRF).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from wsss.refine.crf import CRF_PRESETS, CRFParams
from wsss.refine.crf_select import check_impl, dense_crf
from wsss.serving.backend import PythonModel, RequestError, as_flag
from wsss.serving.crf_layout import AUTO, choose_layout, cores_per_instance
from wsss.serving.imaging import network_size, resize_rgb
from wsss.serving.maps import resize_bilinear, upsample_argmax


def _auto_or_count(parameters: dict[str, str], key: str) -> int | None:
    """A count parameter: a positive int, None for ``auto`` or unset."""
    value = (parameters.get(key) or AUTO).strip()
    if value == AUTO:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"densecrf parameter {key} must be a positive integer or auto, got {value!r}"
        )
    return int(value)


def crf_params(parameters: dict[str, str], gpu_instance: bool = False) -> CRFParams:
    """CRFParams from config parameters: a ``preset`` plus per-field overrides.

    ``impl`` / ``device`` ``auto`` (or unset) resolve to :func:`choose_layout`'s pick for this
    host (``gpu_instance``: a KIND_GPU instance).
    """
    preset = parameters.get("preset") or "deeplab"
    if preset not in CRF_PRESETS:
        raise ValueError(f"unknown CRF preset {preset!r}; known: {sorted(CRF_PRESETS)}")
    overrides: dict[str, Any] = {}
    casts = {"iterations": int, "impl": str, "device": str}
    for field in fields(CRFParams):
        if parameters.get(field.name):
            cast = casts.get(field.name, float)
            try:
                overrides[field.name] = cast(parameters[field.name])
            except ValueError:
                kind = "an integer" if cast is int else "a number"
                raise ValueError(
                    f"densecrf parameter {field.name} must be {kind}, "
                    f"got {parameters[field.name]!r}"
                ) from None
    impl, device = overrides.pop("impl", AUTO), overrides.pop("device", AUTO)
    if impl == AUTO or device == AUTO:
        layout = choose_layout(gpu_instance=gpu_instance)
        impl = layout.impl if impl == AUTO else impl
        device = layout.device if device == AUTO else device
    return replace(CRF_PRESETS[preset], **overrides, impl=check_impl(impl), device=device)


def known_parameters() -> list[str]:
    """The config parameters this model (and the repository tools) read."""
    return [
        "preset", "threads", "instances", "max_side", *(field.name for field in fields(CRFParams))
    ]  # fmt: skip


def torch_threads(parameters: dict[str, str], instances: int = 1) -> int:
    """Intra-op threads of one torch instance: the ``threads`` parameter, or for ``auto`` (or
    unset) this host's cores shared by ``instances``."""
    threads = _auto_or_count(parameters, "threads")
    return threads if threads is not None else cores_per_instance(instances)


def max_side(parameters: dict[str, str]) -> int:
    """The CRF's longest side (``max_side``; 0 or unset: the network's resolution)."""
    value = (parameters.get("max_side") or "0").strip()
    if not value.isdigit():
        raise ValueError(f"densecrf parameter max_side must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ServedCRF:
    """What one densecrf instance runs: the CRF, torch's threads, the resolution cap."""

    params: CRFParams
    threads: int
    max_side: int

    def refine(self, image: np.ndarray, probs: np.ndarray, crf: bool = True):
        """:func:`refine_labels` with these settings (``crf`` false: the plain argmax)."""
        return refine_labels(image, probs, self.params if crf else None, self.max_side)


def model_settings(
    parameters: dict[str, str], gpu_instance: bool = False, instances: int = 1
) -> ServedCRF:
    """The settings a densecrf instance reads from its config parameters (ValueError if bad)."""
    _auto_or_count(parameters, "instances")
    return ServedCRF(
        crf_params(parameters, gpu_instance), torch_threads(parameters, instances),
        max_side(parameters),
    )  # fmt: skip


def scale_kernels(params: CRFParams, factor: float) -> CRFParams:
    """The CRF for an image resized by ``factor``: the kernels' spatial widths scaled alike,
    the smoothness (Gaussian) kernel's not below one pixel.

    Below a pixel its lattice gets about three vertices per pixel: all of the kernel's cost,
    almost none of its smoothing. ``python -m wsss.bench.crf_cap`` (2026-12-06, side 384):
    99.89 % agreement with the uncapped reference either way, 7.3 against 7.8 CPU s.
    """
    return replace(
        params,
        gaussian_sxy=max(params.gaussian_sxy * factor, min(params.gaussian_sxy, 1.0)),
        bilateral_sxy=params.bilateral_sxy * factor,
    )


# A label whose probability stays below this everywhere is left out of the CRF (and gets
# probability 0). It cannot win a pixel there: its unary -log p is above 9.2, while the label with
# the largest probability at that pixel has a unary of at most log K, and a label's Potts
# message is a weighted sum of its own (here near-zero) marginals nearby, which only helps
# labels that are present. So the labels are those of the full CRF; the time is that of the
# present labels (the imagenet source's absent classes are exactly 0: 21 labels -> 2-4).
ABSENT = 1e-4


def crf_on_present_labels(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """:func:`dense_crf` over the labels whose probability reaches ``ABSENT`` somewhere:
    image uint8 [h, w, 3], probs [K, h, w] -> float32 [K, h, w], 0 for the labels left out."""
    peak = probs.reshape(len(probs), -1).max(axis=1)
    keep = np.flatnonzero(peak >= ABSENT)
    if len(keep) == len(probs):
        return dense_crf(image, probs, params)
    out = np.zeros(probs.shape, dtype=np.float32)
    if len(keep) == 1:  # one label left: it wins every pixel
        out[keep[0]] = 1.0
    elif len(keep) > 1:
        out[keep] = dense_crf(image, np.ascontiguousarray(probs[keep]), params)
    return out


def refine_labels(
    image: np.ndarray, probs: np.ndarray, params: CRFParams | None, max_side: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 [H, W], probabilities [K, h', w']) from the image and network probabilities.

    ``params`` None skips the CRF. The CRF runs at the probabilities' resolution (h, w), or at
    (h, w) scaled down to a longest side of ``max_side`` (> 0) with the kernels scaled alike,
    over the labels present somewhere (:func:`crf_on_present_labels`).
    """
    _, h, w = probs.shape
    if params is not None and params.iterations > 0:
        size = (h, w)
        if 0 < max_side < max(h, w):
            size = network_size(h, w, max_side=max_side, min_side=1)
            params = scale_kernels(params, max(size) / max(h, w))
            probs = resize_bilinear(probs, size)
        small = resize_rgb(image, size)
        if not small.flags.writeable:  # pydensecrf needs a writable buffer
            small = small.copy()
        probs = crf_on_present_labels(small, probs, params)
    return upsample_argmax(probs, image.shape[:2]), np.asarray(probs, dtype=np.float32)


WARM_UP_SIDE = 64


class TritonPythonModel(PythonModel):
    name = "densecrf"

    def setup(self, parameters: dict[str, str]) -> None:
        groups = self.model_config.get("instance_group") or [{}]
        instances = int(groups[0].get("count") or 1)
        gpu = self.instance_kind == "GPU"
        self.settings = model_settings(parameters, gpu_instance=gpu, instances=instances)
        if self.settings.params.impl == "torch" and self.settings.params.device == "cpu":
            import torch

            torch.set_num_threads(self.settings.threads)  # this instance's own process
        self.warm_up()

    def warm_up(self) -> None:
        """One small CRF at load, so the first request does not pay for imports and pools."""
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (WARM_UP_SIDE, WARM_UP_SIDE, 3), dtype=np.uint8)
        probs = rng.dirichlet(np.ones(2), (WARM_UP_SIDE, WARM_UP_SIDE)).transpose(2, 0, 1)
        self.settings.refine(image, probs.astype(np.float32))

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        image, probs = inputs["IMAGE"], inputs["PROBS"]
        if probs.ndim == 4:
            if probs.shape[0] != 1:
                raise RequestError(f"PROBS must hold one image, got shape {probs.shape}")
            probs = probs[0]
        if probs.ndim != 3 or image.ndim != 3:
            raise RequestError(f"bad shapes: IMAGE {image.shape}, PROBS {probs.shape}")
        use_crf = as_flag(params.get("crf", True), "crf")
        labels, refined = self.settings.refine(image, probs, use_crf)
        outputs = {"LABELS": labels}
        if as_flag(params.get("probabilities", False), "probabilities"):
            outputs["PROBABILITIES"] = refined
        return outputs
