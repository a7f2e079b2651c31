"""Quality section: every method on the built-in benchmark, ``default`` preset.

Per method, one run of the whole pipeline (``runs/<method>``: seeds, pseudo masks, DeepLab,
the shared fully supervised upper bound) and one AffinityNet refinement of the same CAMs
(``runs/<method>+affinity``: stages affinity, walk and eval on links to the first run's
classifier, CAMs and pseudo masks), whose random-walk masks give the "+AffinityNet" pseudo-mask
column. Runs are resumable: an interrupted section picks up at the stage it stopped in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from wsss.bench.common import Say, fmt, markdown_table

METHODS = ("cam", "ktse", "fbr", "cpn", "ecs", "eps")
# Shared with the first run: the classifier and everything the affinity stages read.
AFFINITY_INPUTS = ("classifier.pt", "cams", "pseudo")
COLUMNS = (
    ("seed_miou", "seed"),
    ("seed_miou_best_gt_assisted", "seed (best t, GT)"),
    ("pseudo_miou_threshold", "pseudo: threshold"),
    ("pseudo_miou_crf", "pseudo: CRF"),
    ("pseudo_miou", "pseudo: CRF + ignore"),
    ("pseudo_miou_affinity", "pseudo: +AffinityNet"),
    ("seg_miou", "DeepLab"),
    ("seg_crf_miou", "DeepLab + CRF"),
)


DIAGNOSTICS = (
    ("fg_rate_on_context", "fg on co-occurring context"),
    ("fg_rate_on_plain_background", "fg on other background"),
    ("recall_on_parts", "recall on distinctive parts"),
    ("recall_on_bodies", "recall on object bodies"),
)


def _run(args: list[str]) -> None:
    from wsss.cli import main

    if main([*args, "--quiet"]) != 0:
        raise RuntimeError(f"train/run.py {' '.join(args)} failed")


def run_method(method: str, runs: Path, preset: str, say: Say) -> dict:
    """Trains and scores ``method``; returns its report plus the AffinityNet columns."""
    out, refined = runs / method, runs / f"{method}+affinity"
    start = time.perf_counter()
    say(f"quality: {method} -> {out}")
    _run([method, "--preset", preset, "--out", str(out)])
    refined.mkdir(parents=True, exist_ok=True)
    for name in AFFINITY_INPUTS:
        link = refined / name
        if not link.exists():
            link.symlink_to((out / name).resolve())
    say(f"quality: {method} + AffinityNet -> {refined}")
    _run(
        [
            method,
            "--preset",
            preset,
            "--out",
            str(refined),
            "--refine",
            "affinity",
            "--stages",
            "affinity,walk,eval",
        ]
    )
    report = json.loads((out / "report.json").read_text())
    walked = json.loads((refined / "report.json").read_text())
    for key in ("pseudo_miou_affinity", "pseudo_miou_affinity_best_gt_assisted"):
        report[key] = walked.get(key)
    report["per_class_iou"]["pseudo_affinity"] = walked["per_class_iou"].get("pseudo_affinity")
    for stage in ("affinity", "walk"):
        report["stage_seconds"][stage] = walked["stage_seconds"].get(stage)
    report["section_seconds"] = round(time.perf_counter() - start, 1)  # this call (resumes skip)
    return report


# KTSE's Table 6: each module alone on the KTSE network, and all three (the main ktse run).
KTSE_ABLATION = {
    "baseline": ("use_sie=false", "use_ssr=false", "use_mga=false"),
    "+SIE": ("use_sie=true", "use_ssr=false", "use_mga=false"),
    "+SSR": ("use_sie=false", "use_ssr=true", "use_mga=false"),
    "+MGA": ("use_sie=false", "use_ssr=false", "use_mga=true"),
}
ABLATION_KEYS = ("seed_miou", "seed_miou_best_gt_assisted", "pseudo_miou_crf", "pseudo_miou")


def ktse_ablation(runs: Path, preset: str, say: Say) -> dict:
    """Seeds and pseudo masks of KTSE with one module at a time (no DeepLab)."""
    rows = {}
    for name, switches in KTSE_ABLATION.items():
        out = runs / "ktse-ablation" / name.strip("+").lower()
        say(f"quality: KTSE ablation {name} -> {out}")
        sets = [x for switch in switches for x in ("--set", f"method.{switch}")]
        _run(
            [
                "ktse",
                "--preset",
                preset,
                "--out",
                str(out),
                "--stages",
                "cls,cam,pseudo,eval",
                "--set",
                "seg.upper_bound=false",
                *sets,
            ]
        )
        report = json.loads((out / "report.json").read_text())
        rows[name] = {key: report.get(key) for key in ABLATION_KEYS}
        rows[name]["stage_seconds"] = report["stage_seconds"]
    return rows


def compute_seconds(results: dict) -> float:
    """Stage time of every run of the section: what a fresh ``--only quality`` costs, less the
    upper bound's one-off training when it is already cached."""
    runs = [*results["methods"].values(), *results.get("ktse_ablation", {}).values()]
    return sum(sum(v or 0.0 for v in r.get("stage_seconds", {}).values()) for r in runs)


def section(
    out_dir: Path, say: Say, methods: tuple[str, ...] = METHODS, preset: str = "default"
) -> dict:
    """Runs every method; JSON-ready results keyed by method."""
    runs = out_dir / "runs"
    reports = {m: run_method(m, runs, preset, say) for m in methods}
    results = {"preset": preset, "runs": str(runs), "methods": reports}
    if "ktse" in reports:
        ablation = ktse_ablation(runs, preset, say)
        ablation["all"] = {key: reports["ktse"].get(key) for key in ABLATION_KEYS}
        results["ktse_ablation"] = ablation
    return results


def _row(name: str, report: dict) -> list[str]:
    supervision = report.get("supervision", "I")
    label = name if supervision == "I" else f"{name} ({supervision})"
    return [label, *(fmt(report.get(key)) for key, _ in COLUMNS)]


def markdown(results: dict) -> str:
    """The results table (with the upper bound), per-class IoU and stage times."""
    reports = results["methods"]
    if not reports:
        return "_no quality results_\n"
    header = ["method", *(title for _, title in COLUMNS)]
    rows = [_row(name, r) for name, r in reports.items()]
    first = next(iter(reports.values()))
    upper = [
        "upper bound (true masks)",
        *[""] * 6,
        fmt(first.get("upper_bound_miou")),
        fmt(first.get("upper_bound_crf_miou")),
    ]
    parts = [markdown_table(header, [*rows, upper])]
    names = first["class_names"]
    per_class = [
        [name, *(fmt(r["per_class_iou"]["seed"].get(c)) for c in names)]
        for name, r in reports.items()
    ]
    parts.append("Seed IoU per class (%):\n\n" + markdown_table(["method", *names], per_class))
    per_class = [
        [name, *(fmt(r["per_class_iou"].get("seg", {}).get(c)) for c in names)]
        for name, r in reports.items()
    ]
    parts.append("DeepLab IoU per class (%):\n\n" + markdown_table(["method", *names], per_class))
    diagnostics = [
        [name, *(fmt(r.get("seed_diagnostics", {}).get(key)) for key, _ in DIAGNOSTICS)]
        for name, r in reports.items()
    ]
    parts.append(
        "What the benchmark is built to show, on the seeds (% of pixels; from its `Context/` "
        "region maps):\n\n" + markdown_table(["method", *(t for _, t in DIAGNOSTICS)], diagnostics)
    )
    if "ktse_ablation" in results:
        rows = [
            [name, *(fmt(r.get(k)) for k in ABLATION_KEYS)]
            for name, r in results["ktse_ablation"].items()
        ]
        titles = dict(COLUMNS)
        parts.append(
            "KTSE ablation (its Table 6; seeds and pseudo masks, mIoU %):\n\n"
            + markdown_table(["KTSE", *(titles[k] for k in ABLATION_KEYS)], rows)
        )
    stages = ("cls", "cam", "pseudo", "affinity", "walk", "seg", "upper", "eval")
    times = [
        [
            name,
            *(fmt(r["stage_seconds"].get(s), 0) for s in stages),
            fmt(sum(r["stage_seconds"].get(s) or 0.0 for s in stages), 0),
        ]
        for name, r in reports.items()
    ]
    parts.append(
        "Wall time per stage (s; the fully supervised `upper` bound is trained by the first run of "
        "a benchmark configuration, then reused from the cache):\n\n"
        + markdown_table(["method", *stages, "total"], times)
    )
    return "\n".join(parts)


def plot(results: dict, path: Path) -> Path:
    """A grouped bar chart: seed, pseudo mask and DeepLab mIoU per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    reports = results["methods"]
    keys = (
        ("seed_miou", "seed"),
        ("pseudo_miou_crf", "pseudo (CRF)"),
        ("pseudo_miou_affinity", "pseudo (+AffinityNet)"),
        ("seg_crf_miou", "DeepLab + CRF"),
    )
    names = list(reports)
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for i, (key, label) in enumerate(keys):
        values = [reports[n].get(key) or 0.0 for n in names]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=label)
    upper = next(iter(reports.values())).get("upper_bound_crf_miou")
    if upper:
        ax.axhline(upper, color="k", ls="--", lw=1, label="upper bound + CRF")
    ax.set_xticks(x, names)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
