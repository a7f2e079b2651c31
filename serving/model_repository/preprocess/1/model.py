"""Triton Python-backend model ``preprocess``; the code lives in wsss.serving.models.preprocess."""

from wsss.serving.models.preprocess import TritonPythonModel

__all__ = ["TritonPythonModel"]
