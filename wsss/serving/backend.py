"""Plumbing shared by the Triton Python-backend models of this project.

A model subclasses :class:`PythonModel` and implements :meth:`PythonModel.process`, a pure
function from named numpy inputs (plus request parameters) to named numpy outputs, which unit
tests call without Triton. ``triton_python_backend_utils`` exists only inside the Triton stub, so
it is imported lazily. Errors: :class:`RequestError` (a bad request, e.g. an unreadable image)
answers that request with INVALID_ARG (HTTP 400); anything else with INTERNAL (HTTP 500); the
other requests of the batch and the server are unaffected.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


class RequestError(ValueError):
    """The request cannot be served as sent; the message is returned to the client."""


def pb_utils() -> Any:
    """The ``triton_python_backend_utils`` module (available inside the Triton stub only)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def config_parameters(model_config: dict) -> dict[str, str]:
    """The ``parameters`` of a model config as a plain {key: string_value} dict."""
    return {
        key: value.get("string_value", "")
        for key, value in (model_config.get("parameters") or {}).items()
    }


def as_flag(value: Any, name: str) -> bool:
    """A boolean request/config parameter from a bool or a string such as "true" / "0"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise RequestError(f"parameter {name!r} must be true or false, got {value!r}")


class PythonModel:
    """Base of the Python-backend models: parses the config, loops over requests."""

    name = "model"
    instance_kind = "CPU"

    def initialize(self, args: dict) -> None:
        self.model_config = json.loads(args["model_config"])
        self.name = args.get("model_name", self.name)
        self.instance_kind = args.get("model_instance_kind", "CPU")  # CPU, GPU or MODEL
        self.parameters = config_parameters(self.model_config)
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.optional_inputs = {i["name"] for i in self.model_config["input"] if i.get("optional")}
        self.setup(self.parameters)

    def setup(self, parameters: dict[str, str]) -> None:
        """Reads config parameters once; override when the model has any."""

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        """Named input arrays + request parameters -> named output arrays."""
        raise NotImplementedError

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        pb = pb_utils()
        inputs = {}
        for name in self.input_names:
            tensor = pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                if name in self.optional_inputs:
                    continue
                raise RequestError(f"{self.name}: missing input {name!r}")
            inputs[name] = tensor.as_numpy()
        return inputs

    def _respond(self, request: Any) -> Any:
        pb = pb_utils()
        try:
            params = json.loads(request.parameters() or "{}")
            outputs = self.process(self._inputs(request), params)
            tensors = [pb.Tensor(name, np.ascontiguousarray(a)) for name, a in outputs.items()]
            return pb.InferenceResponse(output_tensors=tensors)
        except RequestError as exc:
            error = pb.TritonError(f"{self.name}: {exc}", pb.TritonError.INVALID_ARG)
        except Exception as exc:  # noqa: BLE001 - report, keep serving the other requests
            error = pb.TritonError(f"{self.name}: internal error: {type(exc).__name__}: {exc}")
        return pb.InferenceResponse(output_tensors=[], error=error)

    def execute(self, requests: list) -> list:
        return [self._respond(request) for request in requests]

    def finalize(self) -> None:
        """Nothing to release."""
