"""How much CAM seeds suffer from the two failures the built-in benchmark is built to show.

The synthetic dataset writes ``Context/<id>.png`` (1 = water, 2 = rails: co-occurring context
that is background in the ground truth; 3 = each object's small distinctive part). From it:

* over-activation: the share of context pixels that seeds call foreground, beside the same
  share on the rest of the background;
* under-activation: seed recall (correct class) on the distinctive parts, beside recall on the
  rest of the objects' bodies.

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.constants import IGNORE_INDEX

CONTEXT_DIR = "Context"
WATER, RAILS, PART = 1, 2, 3


def has_regions(root: Path) -> bool:
    return (Path(root) / CONTEXT_DIR).is_dir()


def load_regions(root: Path, image_id: str) -> np.ndarray:
    """uint8 [H, W]: 0 plain, 1 water, 2 rails, 3 distinctive part."""
    return np.asarray(Image.open(Path(root) / CONTEXT_DIR / f"{image_id}.png"))


@dataclass
class RegionCounter:
    """Accumulates pixel counts per region; ``per_image`` keeps each image's counts."""

    totals: dict[str, int] = field(default_factory=dict)
    per_image: dict[str, dict[str, int]] = field(default_factory=dict)

    def update(self, image_id: str, gt: np.ndarray, pred: np.ndarray, regions: np.ndarray) -> None:
        """gt, pred int [H, W] (0 background, k class); regions uint8 [H, W]."""
        context = (regions == WATER) | (regions == RAILS)
        plain_bg = (gt == 0) & ~context
        objects = (gt > 0) & (gt != IGNORE_INDEX)
        part = objects & (regions == PART)
        body = objects & (regions != PART)
        counts = {
            "context": int(context.sum()),
            "context_fg": int((context & (pred > 0)).sum()),
            "plain_bg": int(plain_bg.sum()),
            "plain_bg_fg": int((plain_bg & (pred > 0)).sum()),
            "part": int(part.sum()),
            "part_hit": int((part & (pred == gt)).sum()),
            "body": int(body.sum()),
            "body_hit": int((body & (pred == gt)).sum()),
        }
        self.per_image[image_id] = counts
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0) + v

    def summary(self) -> dict[str, float | None]:
        """Percentages: foreground rate on context and plain background, recall on parts/bodies."""

        def pct(num: str, den: str) -> float | None:
            d = self.totals.get(den, 0)
            return round(100.0 * self.totals.get(num, 0) / d, 2) if d else None

        return {
            "fg_rate_on_context": pct("context_fg", "context"),
            "fg_rate_on_plain_background": pct("plain_bg_fg", "plain_bg"),
            "recall_on_parts": pct("part_hit", "part"),
            "recall_on_bodies": pct("body_hit", "body"),
        }

    def worst_over_activation(self, n: int) -> list[str]:
        """Images whose context is most often called foreground."""
        scored = [
            (c["context_fg"] / c["context"], i) for i, c in self.per_image.items() if c["context"]
        ]
        return [i for _, i in sorted(scored, reverse=True)[:n]]

    def worst_under_activation(self, n: int) -> list[str]:
        """Images whose bodies are missed most while their parts are found."""
        scored = [
            (c["part_hit"] / c["part"] - c["body_hit"] / c["body"], i)
            for i, c in self.per_image.items()
            if c["part"] and c["body"]
        ]
        return [i for _, i in sorted(scored, reverse=True)[:n]]
