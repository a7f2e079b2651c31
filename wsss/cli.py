"""Command line of ``python train/run.py``: method, dataset, preset, overrides, stages."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wsss.config import (
    PRESET_HELP,
    PRESETS,
    REFINE_MODES,
    ConfigError,
    RunConfig,
    apply_overrides,
    crf_params,
)

DATASETS = {
    "synthetic": "built-in benchmark, generated once into a cache folder (default)",
    "voc": "PASCAL VOC 2012 layout (+ SBD train_aug); needs --root",
    "coco": "COCO 2014 with semantic PNG masks (python -m wsss.data.coco convert); needs --root",
    "folder": "your images + a CSV/JSON of image-level labels; needs --root",
}


def _method_lines() -> str:
    from wsss.methods import METHODS

    return "\n".join(f"  {name:<10} {m.summary}" for name, m in METHODS.items())


def build_parser() -> argparse.ArgumentParser:
    from wsss.methods import METHODS
    from wsss.pipeline import STAGES

    datasets = "\n".join(f"  {k:<10} {v}" for k, v in DATASETS.items())
    presets = "\n".join(f"  {k:<10} {v}" for k, v in PRESET_HELP.items())
    stages = "\n".join(f"  {s.name:<10} {s.help} -> {s.output}" for s in STAGES)
    parser = argparse.ArgumentParser(
        prog="train/run.py",
        description="Train a WSSS method from image-level labels: classifier, CAMs, pseudo masks, "
        "DeepLab v2, evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"methods:\n{_method_lines()}\n\ndatasets:\n{datasets}\n\npresets:\n{presets}\n\n"
        f"stages (in order):\n{stages}\n\n"
        "example: python train/run.py cam --data synthetic --preset smoke --out runs/smoke",
    )
    parser.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--data", default="synthetic", choices=list(DATASETS), help="dataset kind")
    parser.add_argument("--root", help="dataset folder (voc, coco, folder)")
    parser.add_argument("--preset", default="default", choices=list(PRESETS), help="size of run")
    parser.add_argument(
        "--refine",
        default="none",
        choices=REFINE_MODES,
        help="refine the CAMs before DeepLab: none, or affinity (AffinityNet random walk)",
    )
    parser.add_argument("--out", help="run directory (default runs/METHOD-DATA-PRESET)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set cls.epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--stages", default=",".join(s.name for s in STAGES), help="comma-separated stages to run"
    )
    parser.add_argument("--force", action="store_true", help="redo stages whose output exists")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def build_config(args: argparse.Namespace) -> RunConfig:
    from wsss.methods import get_method

    method_cls = get_method(args.method)
    cfg = RunConfig(
        method_name=args.method, preset=args.preset, device=args.device, refine=args.refine
    )
    cfg.method = method_cls.Config()
    PRESETS[args.preset](cfg)
    method_cls(cfg.method).apply_preset(args.preset, cfg)
    cfg.data.name = args.data
    cfg.data.root = args.root
    if args.data != "synthetic" and not args.root:
        raise ConfigError(f"--data {args.data} needs --root DIR")
    apply_overrides(cfg, args.overrides)
    if cfg.refine not in REFINE_MODES:
        raise ConfigError(f"refine must be one of {', '.join(REFINE_MODES)}, got {cfg.refine!r}")
    crf_params(cfg.seg.crf_preset, cfg.crf)  # a bad crf.impl fails now, not after training
    return cfg


def interrupted_message(out: Path, force: bool) -> str:
    """One line for Ctrl-C: how to continue (see wsss.pipeline: finished stages are skipped,
    per-image stages keep their finished images, training resumes after its last saved epoch)."""
    again = "the same command without --force" if force else "the same command"
    return (
        f"interrupted: {out} keeps what was finished; run {again} to resume (finished stages "
        "are skipped, training continues after its last finished epoch)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from wsss import distributed
    from wsss.checkpoint import CheckpointError
    from wsss.data import build_source
    from wsss.data.base import DatasetError
    from wsss.logs import setup_logging
    from wsss.methods import UnknownMethodError
    from wsss.pipeline import STAGE_NAMES, run_pipeline

    try:
        cfg = build_config(args)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = [s for s in stages if s not in STAGE_NAMES]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGE_NAMES)}")
    except (ConfigError, UnknownMethodError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/{args.method}-{args.data}-{args.preset}")
    if cfg.data.name != "synthetic":  # a bad --root fails before the run folder exists
        try:
            build_source(cfg.data.name, cfg.data.root)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.quiet:
        os.environ["WSSS_NO_PROGRESS"] = "1"
    distributed.init()
    setup_logging(out)
    try:
        report = run_pipeline(cfg, out, stages, force=args.force)
    except (DatasetError, CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if distributed.is_main():
            print(interrupted_message(out, args.force), file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if report:
        keys = ("seed_miou", "seed_miou_best_gt_assisted", "pseudo_miou", "pseudo_miou_affinity",
                "seg_miou", "seg_crf_miou", "upper_bound_miou")  # fmt: skip
        summary = ", ".join(f"{k} {report[k]}" for k in keys if k in report)
        print(f"{out / 'report.json'}: {summary}")
    return 0
