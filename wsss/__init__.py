"""Weakly supervised semantic segmentation: train, export, serve.

This package root imports nothing heavy (no torch): Triton Python backends import
``wsss.constants`` and ``wsss.refine.crf`` from it.
"""

__version__ = "0.1.0"
