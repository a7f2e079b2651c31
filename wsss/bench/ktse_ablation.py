"""KTSE ablation section (KTSE's Table 6): the KTSE network trained with L_cls alone, with each
module alone (SIE, SSR, MGA) and with all three, three training seeds each, ``default`` preset.

Seeds and pseudo masks only (no DeepLab). The "all" row is the quality section's KTSE runs
(``runs/ktse/seed<k>``, trained here if that section has not run); the others go to
``runs/ktse-ablation/<variant>/seed<k>``. Resumable like the quality section.
"""

from __future__ import annotations

from pathlib import Path

from wsss.bench.common import Say, markdown_table
from wsss.bench.quality import SEED_KEYS, SEEDS, mean_std, seed_dir, summarize, train_seed

BASE = "network + L_cls"
VARIANTS: dict[str, tuple[str, ...]] = {
    BASE: ("use_sie=false", "use_ssr=false", "use_mga=false"),
    "+SIE": ("use_sie=true", "use_ssr=false", "use_mga=false"),
    "+SSR": ("use_sie=false", "use_ssr=true", "use_mga=false"),
    "+MGA": ("use_sie=false", "use_ssr=false", "use_mga=true"),
    "all (ktse)": (),
}


def variant_dir(runs: Path, name: str, seed: int) -> Path:
    if not VARIANTS[name]:
        return seed_dir(runs, "ktse", seed)
    slug = "base" if name == BASE else name.strip("+").lower()
    return runs / "ktse-ablation" / slug / f"seed{seed}"


def section(
    out_dir: Path, say: Say, preset: str = "default", seeds: tuple[int, ...] = SEEDS
) -> dict:
    runs = out_dir / "runs"
    rows = {}
    for name, switches in VARIANTS.items():
        sets = tuple(f"method.{switch}" for switch in switches)
        reports = {
            s: train_seed("ktse", variant_dir(runs, name, s), preset, s, False, say, sets)
            for s in seeds
        }
        rows[name] = {
            "switches": list(switches),
            "summary": summarize(reports),
            "stage_seconds": {
                str(s): {k: r["stage_seconds"].get(k) for k in ("cls", "cam", "pseudo", "eval")}
                for s, r in reports.items()
            },
        }
    return {"preset": preset, "seeds": list(seeds), "variants": rows}


def compute_seconds(results: dict) -> float:
    return sum(
        sum(v or 0.0 for v in stages.values())
        for row in results["variants"].values()
        for stages in row["stage_seconds"].values()
    )


def _delta(row: dict, base: dict, key: str) -> str:
    a, b = row["summary"].get(key), base["summary"].get(key)
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return "–"
    delta, width = a["mean"] - b["mean"], max(a["std"], b["std"])
    return f"{delta:+.1f}" + ("" if abs(delta) > width else " (within spread)")


def markdown(results: dict) -> str:
    rows = results["variants"]
    if not rows:
        return "_no ablation results_\n"
    base = rows.get(BASE)
    header = ["KTSE", *(title for _, title in SEED_KEYS), f"seed: vs {BASE}", "health"]
    table = []
    for name, row in rows.items():
        bad = row["summary"].get("unhealthy_seeds", [])
        table.append([
            name,
            *(mean_std(row["summary"].get(key)) for key, _ in SEED_KEYS),
            "" if name == BASE or base is None else _delta(row, base, "seed_miou"),
            "ok" if not bad else f"**unhealthy** (seed {', '.join(map(str, bad))})",
        ])  # fmt: skip
    n = len(results.get("seeds", []))
    return markdown_table(header, table) + (
        f"\nmIoU %, mean ± sample standard deviation over {n} training seeds; *(within spread)*: "
        "the difference is not larger than the larger of the two standard deviations.\n"
    )
