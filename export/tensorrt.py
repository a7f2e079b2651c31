#!/usr/bin/env python
"""Build a TensorRT engine from an exported ONNX model: python export/tensorrt.py MODEL_DIR ..."""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds onnx.py and tensorrt.py, which would shadow the real onnx/tensorrt packages:
# put the repository root in its place on the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from wsss.export.tensorrt import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
