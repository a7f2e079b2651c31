"""Triton Python-backend model ``densecrf``; the code lives in wsss.serving.models.densecrf."""

from wsss.serving.models.densecrf import TritonPythonModel

__all__ = ["TritonPythonModel"]
