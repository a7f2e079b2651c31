#!/usr/bin/env python
"""Train a weakly supervised segmentation method end to end: python train/run.py METHOD ..."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
