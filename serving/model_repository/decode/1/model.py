"""Triton Python-backend model ``decode``; the code lives in wsss.serving.models.decode."""

from wsss.serving.models.decode import TritonPythonModel

__all__ = ["TritonPythonModel"]
