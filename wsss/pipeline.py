"""The stage runner: cls -> cam -> pseudo [-> affinity -> walk] -> seg -> upper -> eval.

A stage whose output exists is skipped unless forced; once a stage runs, every later stage runs
too (its inputs changed). Outputs are written under temporary names and renamed, per-image
stages resume inside their ``.partial`` folder, and training resumes from its last epoch, so an
interrupted run continues where it stopped. Wall time per stage goes to ``timings.json`` and
into ``report.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wsss import distributed
from wsss.config import RunConfig, from_dict, to_dict
from wsss.data import build_source
from wsss.data.synthetic import SyntheticConfig
from wsss.io import atomic_write_json
from wsss.methods import get_method, method_config
from wsss.stages import affinity, cams, classify, evaluate, pseudo, segment
from wsss.stages.context import Context

log = logging.getLogger("wsss")


@dataclass(frozen=True)
class Stage:
    name: str
    output: str
    run: Callable[[Context], dict]
    wanted: Callable[[Context], bool] = lambda ctx: True
    help: str = ""


STAGES: tuple[Stage, ...] = (
    Stage("cls", classify.OUTPUT, classify.run, help="train the classification network"),
    Stage("cam", cams.OUTPUT, cams.run, help="multi-scale CAMs of the training images"),
    Stage("pseudo", pseudo.OUTPUT, pseudo.run, help="pseudo masks from the CAMs"),
    Stage(
        "affinity",
        affinity.OUTPUT,
        affinity.run,
        affinity.wanted,
        help="AffinityNet on CRF labels of the CAMs (--refine affinity)",
    ),
    Stage(
        "walk",
        affinity.WALK_OUTPUT,
        affinity.run_walk,
        affinity.wanted,
        help="random walk of the CAMs on AffinityNet affinities (--refine affinity)",
    ),
    Stage("seg", segment.OUTPUT, segment.run, help="DeepLab v2 on the pseudo masks"),
    Stage(
        "upper",
        segment.UPPER_BOUND,
        segment.run_upper_bound,
        segment.upper_bound_wanted,
        help="fully supervised DeepLab on true masks (upper bound)",
    ),
    Stage("eval", evaluate.OUTPUT, evaluate.run, help="scores and figures"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def make_context(cfg: RunConfig, out: Path) -> Context:
    d = cfg.data
    synthetic = SyntheticConfig(
        seed=d.synthetic_seed,
        image_size=d.synthetic_size,
        n_train=d.synthetic_train,
        n_val=d.synthetic_val,
    )
    source = build_source(d.name, d.root, synthetic=synthetic)
    method = get_method(cfg.method_name)(cfg.method)
    return Context(cfg=cfg, out=out, source=source, method=method)


def load_context(out: Path) -> Context:
    """The context of an existing run directory, from its ``config.json`` (the ``method``
    section read back into the method's own dataclass)."""
    data = json.loads((out / "config.json").read_text())
    cfg = from_dict(RunConfig, data)
    cfg.method = method_config(cfg.method_name, data.get("method"))
    return make_context(cfg, out)


def _record_time(out: Path, stage: str, seconds: float) -> dict:
    path = out / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[stage] = round(seconds, 2)
    atomic_write_json(timings, path)
    return timings


def run_pipeline(
    cfg: RunConfig, out: Path, stages: tuple[str, ...] = STAGE_NAMES, force: bool = False
) -> dict | None:
    """Runs the requested stages in order; returns the report (rank 0) or None."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = make_context(cfg, out)
    if distributed.is_main():
        atomic_write_json(to_dict(cfg), out / "config.json")
    rerun = force
    for stage in STAGES:
        if stage.name not in stages or not stage.wanted(ctx):
            continue
        distributed.barrier()
        if (out / stage.output).exists() and not rerun:
            log.info(
                "stage %-6s skipped: %s exists (use --force to redo)", stage.name, stage.output
            )
            continue
        rerun = True
        log.info("stage %-6s %s", stage.name, stage.help)
        start = time.perf_counter()
        result = stage.run(ctx)
        seconds = time.perf_counter() - start
        log.info("stage %-6s done in %.1f s %s", stage.name, seconds, result or "")
        if distributed.is_main():
            timings = _record_time(out, stage.name, seconds)
            if stage.name == "eval":  # the report was written before eval's own time was known
                report = json.loads((out / evaluate.OUTPUT).read_text())
                report["stage_seconds"] = timings
                atomic_write_json(report, out / evaluate.OUTPUT)
    distributed.barrier()
    report_path = out / evaluate.OUTPUT
    if distributed.is_main() and report_path.exists():
        return json.loads(report_path.read_text())
    return None
