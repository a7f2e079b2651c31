"""Parity of an exported model against its reference: PyTorch vs ONNX Runtime, ORT vs TensorRT.

Both sides are plain callables ``images float32 [B, 3, H, W] (numpy) -> {name: array}``, so one
check serves every pair. Per output it records the maximum absolute difference, checks it
against a :class:`Tolerance`, and for maps [B, K, H, W] the share of pixels whose arg-max over
K agrees. The check runs at several sizes
(one of them odd) because dynamic-shape export bugs show up only away from the traced size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import zoom

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]

# The acceptance numbers: outputs within 1e-4, arg-max agreement on >= 99.9 % of pixels.
ATOL = 1e-4
MIN_AGREEMENT = 0.999
# (batch, height, width) checked after every export: a square size and an odd, non-square one.
PARITY_SIZES: tuple[tuple[int, int, int], ...] = ((2, 321, 321), (2, 257, 385))


class ParityError(RuntimeError):
    """An exported model disagrees with its reference; the message carries the numbers."""


@dataclass(frozen=True)
class Tolerance:
    """Elementwise |candidate - reference| <= atol + rtol * |reference| (numpy's allclose rule),
    and for maps [B, K, H, W] arg-max agreement over K on at least ``min_agreement`` of pixels.

    Probabilities use the absolute bound alone (rtol 0). A normalised CAM is raw / max per class,
    so on a weakly activated class float32 noise is amplified by 1 / max (measured: 1.1e-4 on a
    class whose maximum was 0.009 against 1..5 for the others); CAMs and logits therefore add a
    relative term, as the serving anchors recommend (rtol 1e-3, atol 1e-4).
    """

    atol: float = ATOL
    rtol: float = 0.0
    min_agreement: float = MIN_AGREEMENT

    def describe(self) -> str:
        return f"{self.atol:.0e}" + (f" + {self.rtol:.0e}|ref|" if self.rtol else "")


@dataclass
class OutputParity:
    """One output at one input size."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    worst: float  # max of |diff| / (atol + rtol |ref|): <= 1 passes
    tolerance: Tolerance
    # Maps [B, K, H, W] only (None otherwise): share of pixels whose arg-max over K agrees, with
    # pixels where the reference's top two values are within the tolerance (a tie at the checked
    # precision, e.g. CAM pixels where no class fires) counted as agreeing; and the raw share.
    argmax_agreement: float | None = None
    raw_agreement: float | None = None

    @property
    def passed(self) -> bool:
        ok = self.worst <= 1.0
        if self.argmax_agreement is not None:
            ok = ok and self.argmax_agreement >= self.tolerance.min_agreement
        return ok

    def describe(self) -> str:
        text = (
            f"{self.name} max|diff| {self.max_abs_diff:.2e} (allowed {self.tolerance.describe()})"
        )
        if self.argmax_agreement is not None:
            text += (
                f", argmax agreement {100 * self.argmax_agreement:.3f}%"
                f" (raw {100 * self.raw_agreement:.3f}%)"
            )
        return text + ("" if self.passed else "  FAILED")


@dataclass
class ParityReport:
    """All outputs of one model at every checked size."""

    model: str
    reference: str
    candidate: str
    results: list[tuple[tuple[int, ...], list[OutputParity]]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for _, outs in self.results for o in outs)

    def lines(self) -> list[str]:
        head = f"parity {self.model}: {self.candidate} vs {self.reference}"
        body = []
        for shape, outs in self.results:
            size = "x".join(str(s) for s in shape)
            body.append(f"  {size}: " + "; ".join(o.describe() for o in outs))
        verdict = "  passed" if self.passed else "  FAILED"
        return [head, *body, verdict]

    def failures(self) -> str:
        """The failed outputs on one line, e.g. ``2x3x257x385 CAMS max|diff| 3.1e-03 ...``."""
        parts = []
        for shape, outs in self.results:
            bad = [o.describe() for o in outs if not o.passed]
            if bad:
                parts.append(f"{'x'.join(str(s) for s in shape)} " + ", ".join(bad))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "reference": self.reference,
            "candidate": self.candidate,
            "passed": self.passed,
            "sizes": [
                {
                    "input_shape": list(shape),
                    "outputs": {
                        o.name: {
                            "max_abs_diff": o.max_abs_diff,
                            "atol": o.tolerance.atol,
                            "rtol": o.tolerance.rtol,
                            "argmax_agreement": o.argmax_agreement,
                            "raw_argmax_agreement": o.raw_agreement,
                            "passed": o.passed,
                        }
                        for o in outs
                    },
                }
                for shape, outs in self.results
            ],
        }


def parity_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic RGB-like images float32 [B, 3, H, W] in 0..255.

    Smooth random colour fields (bilinear upsampling of a coarse grid) plus a little noise:
    closer to photographs than white noise, so arg-max maps have regions rather than ties at
    every pixel, yet no data files are needed.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(batch, 3, 6, 6))
    smooth = zoom(coarse, (1, 1, height / 6, width / 6), order=1, grid_mode=True, mode="nearest")
    noise = rng.normal(0, 8, size=smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.float32)


def compare_output(
    name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance = Tolerance()
) -> OutputParity:
    """OutputParity of two arrays of one output (shapes must match)."""
    if reference.shape != candidate.shape:
        raise ParityError(
            f"{name}: shape {tuple(candidate.shape)} differs from the reference "
            f"{tuple(reference.shape)}"
        )
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    diff = np.abs(reference - candidate)
    diff[~np.isfinite(candidate)] = np.inf
    allowed = tolerance.atol + tolerance.rtol * np.abs(reference)
    max_diff = float(diff.max(initial=0.0))
    worst = float((diff / allowed).max(initial=0.0))
    agreement = raw = None
    if reference.ndim == 4 and reference.shape[1] > 1:
        same = reference.argmax(1) == candidate.argmax(1)
        top2 = np.partition(reference, -2, axis=1)[:, -2:]
        tie = top2[:, 1] - top2[:, 0] <= tolerance.atol + tolerance.rtol * np.abs(top2[:, 1])
        raw = float(same.mean())
        agreement = float((same | tie).mean())
    return OutputParity(name, tuple(reference.shape), max_diff, worst, tolerance, agreement, raw)


def check_parity(
    model: str,
    reference: Runner,
    candidate: Runner,
    output_names: Sequence[str],
    sizes: Sequence[tuple[int, int, int]] = PARITY_SIZES,
    names: tuple[str, str] = ("pytorch", "onnxruntime"),
    tolerances: Mapping[str, Tolerance] | Tolerance = Tolerance(),
) -> ParityReport:
    """Runs both sides on the same images at each (B, H, W) and compares every output.

    ``tolerances``: one for all outputs, or one per output name (missing names: the default).
    """
    report = ParityReport(model, names[0], names[1])
    for i, (batch, height, width) in enumerate(sizes):
        images = parity_images(batch, height, width, seed=i)
        ref = reference(images)
        cand = candidate(images)
        outs = []
        for n in output_names:
            tol = (
                tolerances if isinstance(tolerances, Tolerance) else tolerances.get(n, Tolerance())
            )
            outs.append(compare_output(n, np.asarray(ref[n]), np.asarray(cand[n]), tol))
        report.results.append(((batch, 3, height, width), outs))
    return report
