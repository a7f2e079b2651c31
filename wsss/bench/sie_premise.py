"""Does stacking a class-sharing partner weaken the anchor's map? (KTSE's SIE premise, Sec. 3.2)

KTSE's simulated inter-image erasing assumes that with a partner concatenated below it, "fewer
object regions will be highlighted in the anchor part"; L_kt then transfers the single image's
map to that weakened part. This probe measures the premise on a trained classifier: every
training image is stacked (height-wise, as ``ktse_losses.stack_pair``) over a random training
image sharing one of its classes, and the anchor half's ReLU'd CAM is compared with the single
image's, per present class whose single-image map has a positive maximum.

    python -m wsss.bench.sie_premise runs/ktse/seed0 runs/cam/seed0

prints one JSON object per run (medians and quartiles of the mass and peak ratios, the share of
cells above half the single image's peak, and the mean absolute change per row from the top row
to the seam, relative to the mean activation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.bench.common import print_probe_results
from wsss.methods.ktse_losses import stack_pair


def pick_partners(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """labels bool [N, C] -> partner index [N]: another image sharing a random present class of
    each anchor (itself when no other image has it)."""
    partners = np.empty(len(labels), dtype=np.int64)
    for i, row in enumerate(labels):
        present = np.flatnonzero(row)
        if present.size == 0:
            partners[i] = i
            continue
        sharing = np.flatnonzero(labels[:, rng.choice(present)])
        sharing = sharing[sharing != i]
        partners[i] = rng.choice(sharing) if sharing.size else i
    return partners


@torch.no_grad()
def anchor_vs_single(
    model: nn.Module, anchor: torch.Tensor, partner: torch.Tensor, present: np.ndarray
) -> list[dict[str, np.ndarray | float]]:
    """anchor, partner [1, 3, H, W]; present: class indices. Per class with a positive single-
    image maximum: mass and peak ratios (anchor half / single), the share of cells above half the
    single peak in each, and |anchor half - single| per row [h] over the single map's mean."""
    single = F.relu(model(anchor)["cams"])[0]
    stacked = F.relu(model(stack_pair(anchor, partner, "height"))["cams"])[0]
    half = stacked[:, : single.shape[1]]
    out = []
    for k in present:
        peak = single[k].max()
        if peak <= 0:
            continue
        out.append(
            {
                "mass": (half[k].sum() / single[k].sum()).item(),
                "peak": (half[k].max() / peak).item(),
                "cover_single": (single[k] > 0.5 * peak).float().mean().item(),
                "cover_half": (half[k] > 0.5 * peak).float().mean().item(),
                "row_change": ((half[k] - single[k]).abs().mean(1) / single[k].mean()).numpy(),
            }
        )
    return out


def summarize(records: list[dict]) -> dict:
    """Medians / quartiles of the ratios, mean covers, and the mean row change (top -> seam)."""
    if not records:
        raise ValueError("no present class with a positive single-image map")

    def quartiles(key: str) -> list[float]:
        values = [r[key] for r in records]
        return [round(float(np.percentile(values, q)), 3) for q in (25, 50, 75)]

    return {
        "classes": len(records),
        "mass_ratio_q25_median_q75": quartiles("mass"),
        "peak_ratio_q25_median_q75": quartiles("peak"),
        "cover_single": round(float(np.mean([r["cover_single"] for r in records])), 3),
        "cover_anchor_half": round(float(np.mean([r["cover_half"] for r in records])), 3),
        "row_change_top_to_seam": [
            round(float(v), 2) for v in np.mean([r["row_change"] for r in records], axis=0)
        ],
    }


def probe_run(run: Path, seed: int = 0) -> dict:
    """Load ``run``'s classifier and its dataset's training images; stack and compare."""
    from wsss.checkpoint import load_classifier
    from wsss.data.loaders import image_to_tensor
    from wsss.pipeline import load_context

    model, _ = load_classifier(run / "classifier.pt")
    model.eval()
    ctx = load_context(run)
    samples = [ctx.source.load(i) for i in ctx.ids("train")]
    labels = np.stack([s.labels for s in samples]) > 0.5
    partners = pick_partners(labels, np.random.default_rng(seed))
    records: list[dict] = []
    for i, sample in enumerate(samples):
        records += anchor_vs_single(
            model,
            image_to_tensor(sample.image)[None],
            image_to_tensor(samples[partners[i]].image)[None],
            np.flatnonzero(labels[i]),
        )
    return {"run": str(run), **summarize(records)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.bench.sie_premise",
        description="Measure whether stacking a class-sharing partner weakens the anchor's CAM "
        "(KTSE's SIE premise) for trained classifiers (run folders with classifier.pt).",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (train/run.py --out)")
    parser.add_argument("--seed", type=int, default=0, help="partner sampling seed (default 0)")
    args = parser.parse_args(argv)
    return print_probe_results(args.runs, lambda run: [probe_run(run, args.seed)])


if __name__ == "__main__":
    sys.exit(main())
