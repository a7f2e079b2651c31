"""Quality section: every method on the built-in benchmark, ``default`` preset, three seeds.

Per method and training seed (``cls.seed`` 0, 1, 2; the same data), the classifier-side stages
(cls, cam, pseudo, eval) in ``runs/<method>/seed<k>``: seeds, pseudo masks and the health
block, reported as mean and standard deviation over the seeds. Seed 0's run goes on to DeepLab
(its pseudo masks) and the shared fully supervised upper bound; for the baseline and EPS also
to one AffinityNet refinement of its CAMs (``runs/<method>/seed0+affinity``: stages affinity,
walk and eval on links to seed 0's classifier, CAMs and pseudo masks), whose random-walk masks
give the "+AffinityNet" column. Runs are resumable: an interrupted section picks up at the stage it
stopped in.

The KTSE ablation (its Table 6: each module alone, three seeds) is the ``ktse_ablation``
section (:mod:`wsss.bench.ktse_ablation`); it reuses these KTSE runs as its "all" row.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from wsss.bench.common import Say, fmt, markdown_table

METHODS = ("cam", "ktse", "fbr", "cpn", "ecs", "eps")
SEEDS = (0, 1, 2)
BASELINE = "cam"
# AffinityNet refines seed 0 of these (the baseline, and EPS, whose paper's pipeline ends with
# it); the others would cost ~2 min each of the section's 100-minute budget.
AFFINITY_METHODS = ("cam", "eps")
# Shared with the first run: the classifier and everything the affinity stages read.
AFFINITY_INPUTS = ("classifier.pt", "cams", "pseudo")
# Classifier-side metrics: mean +- std over the seeds.
SEED_KEYS = (
    ("seed_miou", "seed"),
    ("seed_miou_best_gt_assisted", "seed (best t, GT)"),
    ("pseudo_miou_crf", "pseudo: CRF"),
    ("pseudo_miou", "pseudo: CRF + ignore"),
)
# Seed 0 only (one DeepLab per method).
SEED0_KEYS = (
    ("pseudo_miou_affinity", "pseudo: +AffinityNet"),
    ("seg_miou", "DeepLab"),
    ("seg_crf_miou", "DeepLab + CRF"),
)
# Differences to the baseline reported with the spread: seeds and CRF pseudo masks.
COMPARED = (("seed_miou", "seed"), ("pseudo_miou_crf", "pseudo: CRF"))
# What each paper reports for its seeds, mIoU on VOC 2012 train (the table;
# ../shared/specs/seed-<method>.md), shown as the margin over IRN's beside "seed: vs cam". FBR
# gives its seeds only on a host (Table II: PPC-based 72.2, +1.7 over PPC itself); EPS's range
# is its reproductions'.
IRN_SEED_MIOU = 48.3
PAPER_SEEDS: dict[str, tuple[tuple[float, ...], str]] = {
    "ktse": ((67.0,), ""),
    "fbr": ((72.2,), "PPC host"),
    "cpn": ((57.4,), ""),
    "ecs": ((56.6,), ""),
    "eps": ((69.7, 71.4), ""),
}
PAPER_COLUMN = "paper: seed vs IRN (VOC)"


def paper_margin(name: str) -> str:
    """``+18.7 (67.0)``: the paper's seed mIoU over IRN's, its own value(s) in brackets."""
    if name not in PAPER_SEEDS:
        return ""
    seeds, host = PAPER_SEEDS[name]
    margins = " to ".join(f"{v - IRN_SEED_MIOU:+.1f}" for v in seeds)
    values = "-".join(f"{v:.1f}" for v in seeds)
    return f"{margins} ({values}{', ' + host if host else ''})"


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


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def train_seed(
    method: str,
    out: Path,
    preset: str,
    seed: int,
    full: bool,
    say: Say,
    sets: tuple[str, ...] = (),
) -> dict:
    """One training seed of ``method`` in ``out``: cls, cam, pseudo, eval (+ seg, upper when
    ``full``); ``sets`` are extra ``--set`` overrides. Returns the run's report."""
    say(f"quality: {method} seed {seed} -> {out}")
    args = [method, "--preset", preset, "--out", str(out), "--set", f"cls.seed={seed}"]
    if not full:
        args += ["--stages", "cls,cam,pseudo,eval", "--set", "seg.upper_bound=false"]
    _run([*args, *(x for value in sets for x in ("--set", value))])
    return _report(out)


def seed_dir(runs: Path, method: str, seed: int) -> Path:
    return runs / method / f"seed{seed}"


def refine_with_affinity(method: str, runs: Path, preset: str, say: Say) -> dict:
    """AffinityNet + random walk on seed 0's CAMs; returns the walked report."""
    first = seed_dir(runs, method, 0)
    refined = first.with_name("seed0+affinity")
    refined.mkdir(parents=True, exist_ok=True)
    for name in AFFINITY_INPUTS:
        link = refined / name
        if not link.exists():
            link.symlink_to((first / name).resolve())
    say(f"quality: {method} seed 0 + AffinityNet -> {refined}")
    stages = ["--refine", "affinity", "--stages", "affinity,walk,eval"]
    _run([method, "--preset", preset, "--out", str(refined), *stages])
    return _report(refined)


def spread(values: list[float | None]) -> dict:
    """{"mean", "std", "values"}: std is the sample standard deviation (n - 1), 0 for one run."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "values": values}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": round(statistics.fmean(present), 2), "std": round(std, 2), "values": values}


def summarize(reports: dict[int, dict]) -> dict:
    """Mean and spread over the seeds of the classifier-side metrics, diagnostics and health."""
    ordered = [reports[s] for s in sorted(reports)]
    summary = {key: spread([r.get(key) for r in ordered]) for key, _ in SEED_KEYS}
    for key, _ in DIAGNOSTICS:
        summary[key] = spread([r.get("seed_diagnostics", {}).get(key) for r in ordered])
    unhealthy = [s for s in sorted(reports) if not reports[s].get("health", {}).get("healthy")]
    summary["unhealthy_seeds"] = unhealthy
    return summary


def run_method(method: str, runs: Path, preset: str, seeds: tuple[int, ...], say: Say) -> dict:
    """Every seed of ``method``, seed 0 with DeepLab and AffinityNet; the method's results."""
    start = time.perf_counter()
    reports = {
        s: train_seed(method, seed_dir(runs, method, s), preset, s, s == seeds[0], say)
        for s in seeds
    }
    first = reports[seeds[0]]
    walked = refine_with_affinity(method, runs, preset, say) if method in AFFINITY_METHODS else {}
    stage_seconds = {
        s: dict(r.get("stage_seconds", {})) for s, r in reports.items()
    }  # per seed: cls, cam, pseudo, eval (+ seg, upper)
    for stage in ("affinity", "walk"):
        stage_seconds[seeds[0]][stage] = walked.get("stage_seconds", {}).get(stage)
    seed0 = {key: first.get(key) for key, _ in SEED0_KEYS}
    seed0["pseudo_miou_affinity"] = walked.get("pseudo_miou_affinity")
    return {
        "supervision": first.get("supervision", "I"),
        "class_names": first["class_names"],
        "summary": summarize(reports),
        "seed0": seed0,
        "upper_bound_miou": first.get("upper_bound_miou"),
        "upper_bound_crf_miou": first.get("upper_bound_crf_miou"),
        "per_class_iou": {
            "seed": first.get("per_class_iou", {}).get("seed"),
            "seg": first.get("per_class_iou", {}).get("seg"),
            "upper_bound": first.get("per_class_iou", {}).get("upper_bound"),
        },
        "reports": {str(s): _compact(r) for s, r in reports.items()},
        "stage_seconds": {str(s): t for s, t in stage_seconds.items()},
        "section_seconds": round(time.perf_counter() - start, 1),  # this call (resumes skip)
    }


def _compact(report: dict) -> dict:
    """A seed's report without the long threshold curve."""
    return {k: v for k, v in report.items() if k not in ("seed_miou_curve", "figures")}


def compute_seconds(results: dict) -> float:
    """Stage time of every run of the section: what a fresh ``--only quality`` costs, less the
    upper bound's one-off training when it is already cached."""
    total = 0.0
    for r in results["methods"].values():
        for stages in r.get("stage_seconds", {}).values():
            total += sum(v or 0.0 for v in stages.values())
    return total


def section(
    out_dir: Path,
    say: Say,
    methods: tuple[str, ...] = METHODS,
    preset: str = "default",
    seeds: tuple[int, ...] = SEEDS,
) -> dict:
    """Runs every method with every seed; JSON-ready results keyed by method."""
    runs = out_dir / "runs"
    reports = {m: run_method(m, runs, preset, seeds, say) for m in methods}
    from wsss.data.synthetic import GENERATOR_VERSION

    return {
        "preset": preset,
        "generator_version": GENERATOR_VERSION,
        "seeds": list(seeds),
        "runs": str(runs),
        "methods": reports,
    }


# ---------------------------------------------------------------------------------------------
# Rendering


def mean_std(entry: dict | None) -> str:
    """``45.1 ± 0.8`` from a :func:`spread` entry."""
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def versus_baseline(method: dict, baseline: dict, key: str) -> dict | None:
    """Difference of means to the baseline and whether it exceeds the larger of the two spreads.

    Returns {"delta", "spread", "beyond_spread"} or None when either mean is missing.
    """
    a, b = method["summary"].get(key), baseline["summary"].get(key)
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return None
    delta = a["mean"] - b["mean"]
    width = max(a["std"], b["std"])
    return {"delta": round(delta, 2), "spread": width, "beyond_spread": abs(delta) > width}


def _versus_cell(comparison: dict | None) -> str:
    if comparison is None:
        return "–"
    mark = "" if comparison["beyond_spread"] else " (within spread)"
    return f"{comparison['delta']:+.1f}{mark}"


def _health_cell(method: dict, n_seeds: int) -> str:
    bad = method["summary"].get("unhealthy_seeds", [])
    return "ok" if not bad else f"**unhealthy** (seed {', '.join(str(s) for s in bad)})"


def _label(name: str, method: dict) -> str:
    supervision = method.get("supervision", "I")
    return name if supervision == "I" else f"{name} ({supervision})"


def markdown(results: dict) -> str:
    """The results table (mean ± std over seeds, the baseline comparison, health), the upper
    bound, per-class IoU of seed 0, the benchmark's diagnostics and the stage times."""
    methods = results["methods"]
    if not methods:
        return "_no quality results_\n"
    n_seeds = len(results.get("seeds", [0]))
    baseline = methods.get(BASELINE)
    header = [
        "method",
        *(title for _, title in SEED_KEYS),
        *(f"{title}: vs {BASELINE}" for _, title in COMPARED),
        PAPER_COLUMN,
        *(f"{title} (seed 0)" for _, title in SEED0_KEYS),
        "health",
    ]
    rows = []
    for name, m in methods.items():
        versus = [
            "" if name == BASELINE or baseline is None else _versus_cell(
                versus_baseline(m, baseline, key)
            )
            for key, _ in COMPARED
        ]  # fmt: skip
        rows.append([
            _label(name, m),
            *(mean_std(m["summary"].get(key)) for key, _ in SEED_KEYS),
            *versus,
            paper_margin(name),
            *(fmt(m["seed0"].get(key)) for key, _ in SEED0_KEYS),
            _health_cell(m, n_seeds),
        ])  # fmt: skip
    first = next(iter(methods.values()))
    upper = [
        "upper bound (true masks)",
        *[""] * (len(header) - 4),  # under DeepLab and DeepLab + CRF; no health
        fmt(first.get("upper_bound_miou")),
        fmt(first.get("upper_bound_crf_miou")),
        "",
    ]
    parts = [
        "The benchmark's first training images (generator "
        f"v{results.get('generator_version', '?')}; regions: distinctive parts red, water "
        "blue, rails grey):\n\n"
        f"![benchmark]({BENCHMARK_FIGURE})\n",
        markdown_table(header, [*rows, upper]),
    ]
    parts.append(
        f"Mean ± sample standard deviation over {n_seeds} training seeds (`cls.seed` "
        f"{', '.join(str(s) for s in results.get('seeds', []))}; same data). "
        f'"vs {BASELINE}": difference of the means; *(within spread)* where it is not larger '
        "than the larger of the two standard deviations. "
        f'"{PAPER_COLUMN}": the margin its paper reports for the same quantity, seed mIoU on '
        f"VOC 2012 train over IRN's {IRN_SEED_MIOU} (its own seeds in brackets; FBR on its PPC "
        "host, EPS as reproduced). DeepLab columns: seed 0's pseudo masks."
    )
    names = first["class_names"]
    for stage, title in (("seed", "Seed"), ("seg", "DeepLab")):
        per_class = [
            [name, *(fmt((m["per_class_iou"].get(stage) or {}).get(c)) for c in names)]
            for name, m in methods.items()
        ]
        parts.append(
            f"{title} IoU per class, seed 0 (%):\n\n"
            + markdown_table(["method", *names], per_class)
        )
    diagnostics = [
        [name, *(mean_std(m["summary"].get(key)) for key, _ in DIAGNOSTICS)]
        for name, m in methods.items()
    ]
    parts.append(
        "What the benchmark is built to show, on the seeds (% of pixels, mean ± std over the "
        "seeds; from its `Context/` region maps):\n\n"
        + markdown_table(["method", *(t for _, t in DIAGNOSTICS)], diagnostics)
    )
    stages = ("cls", "cam", "pseudo", "eval", "affinity", "walk", "seg", "upper")
    times = []
    for name, m in methods.items():
        per_seed = m.get("stage_seconds", {}).values()
        totals = [sum((t.get(s) or 0.0) for t in per_seed) for s in stages]
        times.append([name, *(fmt(v, 0) for v in totals), fmt(sum(totals), 0)])
    parts.append(
        f"Wall time per stage, summed over the {n_seeds} seeds (s; `affinity`, `walk`, `seg` and "
        "`upper` run for seed 0 only, and the fully supervised `upper` bound is trained by the "
        "first run of a benchmark configuration, then reused from the cache):\n\n"
        + markdown_table(["method", *stages, "total"], times)
    )
    return "\n".join(parts)


BENCHMARK_FIGURE = "benchmark.png"


def benchmark_figure(preset: str, path: Path) -> Path:
    """The first training images of the preset's benchmark with their masks, diagnostic
    regions and saliency (:func:`wsss.data.synthetic.benchmark_figure`)."""
    from wsss.config import PRESETS, RunConfig
    from wsss.data.synthetic import SyntheticConfig, benchmark_figure

    cfg = RunConfig()
    PRESETS[preset](cfg)
    d = cfg.data
    synthetic = SyntheticConfig(
        seed=d.synthetic_seed, image_size=d.synthetic_size, n_train=d.synthetic_train,
        n_val=d.synthetic_val,
    )  # fmt: skip
    benchmark_figure(synthetic).save(path)
    return path


def plot(results: dict, path: Path) -> Path:
    """Grouped bars with the seeds' spread: seed and CRF pseudo-mask mIoU per method, and seed
    0's DeepLab + CRF; the upper bound as a line. Also writes the benchmark's image strip
    (``benchmark.png``) beside it."""
    benchmark_figure(results.get("preset", "default"), path.with_name(BENCHMARK_FIGURE))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = results["methods"]
    names = list(methods)
    bars = [
        ("seed", [methods[n]["summary"].get("seed_miou") for n in names]),
        ("pseudo (CRF)", [methods[n]["summary"].get("pseudo_miou_crf") for n in names]),
        ("DeepLab + CRF (seed 0)", [{"mean": methods[n]["seed0"].get("seg_crf_miou"), "std": 0}
                                    for n in names]),
    ]  # fmt: skip
    x = np.arange(len(names))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for i, (label, entries) in enumerate(bars):
        means = [(e or {}).get("mean") or 0.0 for e in entries]
        stds = [(e or {}).get("std") or 0.0 for e in entries]
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=2, label=label)
    upper = next(iter(methods.values())).get("upper_bound_crf_miou")
    if upper:
        ax.axhline(upper, color="k", ls="--", lw=1, label="upper bound + CRF")
    ax.set_xticks(x, names)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
