"""What every stage gets: the config, the run directory, the dataset, the method, the device."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from wsss import distributed
from wsss.config import RunConfig
from wsss.data.base import ImageSource
from wsss.logs import progress
from wsss.methods.base import Method

log = logging.getLogger("wsss")


@dataclass
class Context:
    cfg: RunConfig
    out: Path
    source: ImageSource
    method: Method

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    @cached_property
    def device(self) -> torch.device:
        if self.cfg.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.cfg.device)

    def ids(self, split: str) -> list[str]:
        """Image ids of a split, capped at ``data.max_images``."""
        ids = self.source.ids(split)
        cap = self.cfg.data.max_images
        return ids[:cap] if cap else ids

    def union_ids(self, *splits: str) -> list[str]:
        """Ids of several splits, each once, in order."""
        return list(dict.fromkeys(i for s in splits for i in self.ids(s)))

    def path(self, name: str) -> Path:
        return self.out / name


def run_per_image(ctx: Context, name: str, ids: list[str], work) -> None:
    """Runs ``work(image_id, partial_dir)`` for each id into ``<name>.partial/``, then renames it.

    Ids whose output already exists in the partial folder are skipped, so an interrupted stage
    resumes where it stopped; ranks under torchrun split the ids. ``work`` returns nothing and
    writes ``partial_dir / f"{image_id}.<ext>"`` atomically; ``done(...)`` is checked by name.
    """
    final = ctx.path(name)
    partial = ctx.path(name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    existing = {p.stem for p in partial.iterdir() if not p.name.startswith(".")}
    todo = [i for i in distributed.shard(ids) if i not in existing]
    if existing:
        log.info("%s: resuming, %d of %d images already done", name, len(existing), len(ids))
    for image_id in progress(todo, name):
        work(image_id, partial)
    distributed.barrier()
    if distributed.is_main():
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    distributed.barrier()
