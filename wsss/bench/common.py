"""Helpers shared by the benchmark sections and probes: the machine description, Markdown tables
and the probes' command-line loop."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Say = Callable[[str], None]


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table: fixed digits, an en dash when missing."""
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_probe_results(runs: Sequence[Path], probe: Callable[[Path], list[dict]]) -> int:
    """Run a probe that reopens each run's trained classifier and print its results, one JSON
    object per line; exit status 2 with a one-line error, before measuring anything, when a run
    folder holds no ``classifier.pt``."""
    for run in runs:
        if not (run / "classifier.pt").is_file():
            print(
                f"error: {run}/classifier.pt not found (train the run's cls stage first)",
                file=sys.stderr,
            )
            return 2
    for run in runs:
        for result in probe(run):
            print(json.dumps(result))
    return 0


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def describe(info: dict) -> str:
    """One line naming the machine: ``2 x Intel ... (2 cores), torch 2.13.0``."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']} ({info['cpu_count']} cores){gpu}, torch {info['torch']}"
