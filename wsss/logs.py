"""Logging set-up and progress bars (quiet under ``--quiet``/``WSSS_NO_PROGRESS=1`` and on
ranks other than 0)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from wsss import distributed


def progress(iterable: Iterable, desc: str, **kwargs) -> tqdm:
    """A tqdm bar on rank 0 unless progress bars are switched off."""
    quiet = os.environ.get("WSSS_NO_PROGRESS") == "1" or not distributed.is_main()
    return tqdm(iterable, desc=desc, disable=quiet, dynamic_ncols=True, **kwargs)


def setup_logging(out: Path) -> None:
    """INFO to stderr and ``out/run.log`` on rank 0; warnings only on other ranks."""
    out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    logger = logging.getLogger("wsss")
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if main:
        file = logging.FileHandler(out / "run.log")
        file.setFormatter(fmt)
        logger.addHandler(file)
