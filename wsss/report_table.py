"""Markdown tables from run directories' ``report.json`` (the README's results tables).

python -m wsss.report_table runs/cam-default runs/ktse-default ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (
    ("method", "method"),
    ("seed_miou", "seed (fixed bg)"),
    ("seed_miou_best_gt_assisted", "seed (best bg, GT-assisted)"),
    ("pseudo_miou_threshold", "pseudo: threshold"),
    ("pseudo_miou_crf", "pseudo: CRF"),
    ("pseudo_miou", "pseudo: CRF + ignore (trained on)"),
    ("pseudo_miou_affinity", "+AffinityNet"),
    ("seg_miou", "DeepLab"),
    ("seg_crf_miou", "DeepLab + CRF"),
    ("upper_bound_miou", "fully supervised"),
)


def _cell(report: dict, key: str) -> str:
    value = report.get(key)
    if value is None:
        return "-"
    if key == "method" and report.get("supervision") == "I+S":
        return f"{value} (I+S)"
    if key == "seed_miou":
        return f"{value} (t={report['seed_bg_threshold']})"
    if key == "seed_miou_best_gt_assisted":
        return f"{value} (t={report['seed_best_bg_threshold_gt_assisted']})"
    return str(value)


def results_table(reports: list[dict]) -> str:
    """mIoU (%) of every stage, one row per run."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for r in reports:
        lines.append("| " + " | ".join(_cell(r, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def timing_table(reports: list[dict]) -> str:
    """Wall time (s) of every stage, one row per run."""
    stages = list(dict.fromkeys(s for r in reports for s in r.get("stage_seconds", {})))
    lines = ["| method | " + " | ".join(stages) + " | total |", "|" + "---|" * (len(stages) + 2)]
    for r in reports:
        t = r.get("stage_seconds", {})
        cells = [f"{t[s]:.0f}" if s in t else "-" for s in stages]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {sum(t.values()):.0f} |")
    return "\n".join(lines)


def diagnostics_table(reports: list[dict]) -> str:
    """Over- and under-activation of the seeds (built-in benchmark only)."""
    keys = ("fg_rate_on_context", "fg_rate_on_plain_background", "recall_on_parts",
            "recall_on_bodies")  # fmt: skip
    lines = ["| method | " + " | ".join(k.replace("_", " ") for k in keys) + " |"]
    lines.append("|" + "---|" * (len(keys) + 1))
    for r in reports:
        d = r.get("seed_diagnostics")
        if d:
            lines.append(f"| {r['method']} | " + " | ".join(str(d[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with report.json")
    args = parser.parse_args(argv)
    reports = [json.loads((run / "report.json").read_text()) for run in args.runs]
    print(results_table(reports), timing_table(reports), diagnostics_table(reports), sep="\n\n")


if __name__ == "__main__":
    main()
