"""``python -m wsss.bench``: runs the benchmark sections, writes results.json, a Markdown report,
plots, and rewrites the README's measured tables from results.json.

    python -m wsss.bench                       # every section (make bench)
    python -m wsss.bench --only quality,crf    # some sections; others keep their last results

Output: ``bench/results/<date>/results.json`` (one entry per section: when, on what machine,
how long, the numbers), ``report.md`` and ``*.png``. Each README table sits between
``<!-- bench:<section> -->`` and ``<!-- /bench:<section> -->`` markers and is replaced by the
section's Markdown, with the machine and date it was measured on, so it cannot drift from the
measurements. Benchmarks only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from wsss.bench.common import describe, machine
from wsss.io import atomic_write_json

SECTIONS = {
    "quality": "every method on the built-in benchmark (default preset), three training seeds: "
    "seeds, pseudo masks, health; seed 0: AffinityNet, DeepLab, upper bound",
    "ktse_ablation": "KTSE's Table 6 on the built-in benchmark: each module alone, three seeds",
    "inference": "CAM network and DeepLab: PyTorch eager vs ONNX Runtime, batch 1/4, 321/513 px",
    "serving": "local Triton end to end per endpoint, HTTP and gRPC, concurrency 1/2/4",
    "crf": "dense CRF time per image vs size: pydensecrf2 vs the PyTorch port; mIoU with each",
    "training": "classification-stage images per second per method",
    "imagenet": "the imagenet source (ImageNet MobileNetV2 CAMs, no training) on real photos: "
    "classes found, mask IoU, CAM combination x background threshold",
}
ROOT = Path(__file__).resolve().parents[2]


def _say(text: str) -> None:
    print(text, flush=True)


def run_sections(names: list[str], out_dir: Path, say=_say) -> dict:
    """Runs ``names`` in order, saving results.json after each; returns all results."""
    import torch

    path = out_dir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    threads = torch.get_num_threads()
    for name in names:
        module = importlib.import_module(f"wsss.bench.{name}")
        say(f"== {name}: {SECTIONS[name]}")
        start = time.perf_counter()
        try:
            data = module.section(out_dir, say)
        finally:  # crf and inference pin their thread count: the next section gets the default
            torch.set_num_threads(threads)
        results["sections"][name] = {
            "measured": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "seconds": round(time.perf_counter() - start, 1),
            "results": data,
        }
        atomic_write_json(results, path)
        say(f"== {name} done in {results['sections'][name]['seconds']:.0f} s")
    return results


def section_markdown(name: str, entry: dict, out_dir: Path) -> str:
    """A section's tables with the line saying where and when they were measured."""
    module = importlib.import_module(f"wsss.bench.{name}")
    when = entry["measured"].replace("T", " ")[:16]
    took = f"{entry['seconds'] / 60:.0f} min"
    if hasattr(module, "compute_seconds"):  # resumable sections: the stage time of all runs
        took = f"{module.compute_seconds(entry['results']) / 60:.0f} min of stage time"
    head = (
        f"_Measured {when} on {describe(entry['machine'])}, "
        f"`python -m wsss.bench --only {name}` ({took})._\n\n"
    )
    body = module.markdown(entry["results"])
    if hasattr(module, "plot"):
        figure = module.plot(entry["results"], out_dir / f"{name}.png")
        body += f"\n![{name}]({figure.name})\n"
    return head + body


def render_sections(results: dict, out_dir: Path) -> dict[str, str]:
    """Each measured section's Markdown (plots written once), in the order of ``SECTIONS``."""
    measured = results["sections"]
    return {n: section_markdown(n, measured[n], out_dir) for n in SECTIONS if n in measured}


def write_report(bodies: dict[str, str], out_dir: Path) -> Path:
    parts = ["# Benchmark report\n"]
    parts += [f"## {name}\n\n{SECTIONS[name]}\n\n{body}" for name, body in bodies.items()]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def update_readme(bodies: dict[str, str], readme: Path, out_dir: Path) -> list[str]:
    """Replaces each ``<!-- bench:NAME -->`` block of the README; returns the names replaced."""
    text = readme.read_text(encoding="utf-8")
    rel = Path(os.path.relpath(out_dir.resolve(), readme.parent.resolve())).as_posix()
    done = []
    for name, body in bodies.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            continue
        body = re.sub(r"!\[(\w+)\]\((\w+\.png)\)", rf"![\1]({rel}/\2)", body)
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
        done.append(name)
    readme.write_text(text, encoding="utf-8")
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.bench",
        description="Benchmarks: " + "; ".join(f"{k} = {v}" for k, v in SECTIONS.items()),
    )
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="results folder (default: bench/results/<today>)")
    parser.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "README.md",
        help="README whose bench tables are rewritten, with those of the docs/*.md beside it "
        "(default: the project's)",
    )
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite report.md and the README from results.json, run nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(SECTIONS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(
            f"error: unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out or ROOT / "bench" / "results" / dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        path = out_dir / "results.json"
        if not path.exists():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        results = json.loads(path.read_text())
    else:
        results = run_sections(names, out_dir)
    bodies = render_sections(results, out_dir)
    report = write_report(bodies, out_dir)
    _say(f"wrote {out_dir / 'results.json'} and {report}")
    if not args.no_readme and args.readme.exists():
        replaced = update_readme(bodies, args.readme, out_dir)
        _say(f"README tables updated: {', '.join(replaced) or 'none (no bench markers)'}")
        for document in sorted((args.readme.parent / "docs").glob("*.md")):
            if "<!-- bench:" in document.read_text(encoding="utf-8"):
                replaced = update_readme(bodies, document, out_dir)
                _say(f"{document.name} tables updated: {', '.join(replaced) or 'none'}")
    return 0
