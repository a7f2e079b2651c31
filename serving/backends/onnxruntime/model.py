"""A Python-based Triton backend named ``onnxruntime``: CPU development substitute.

The Triton binary shipped in ``nvidia-pytriton`` has no C++ ONNX Runtime backend. Copied to
``<backend-directory>/onnxruntime/model.py`` (``wsss.serving.bundle.assemble_backends`` does it),
this file makes unmodified ``platform: "onnxruntime_onnx"`` models load and serve through the
``onnxruntime`` Python package on CPU. The NVIDIA Triton container uses its real backend instead;
the model configs are the same for both.

Honoured config fields: ``input``/``output`` names and data types, ``default_model_filename``,
and the ONNX Runtime backend's ``parameters`` ``intra_op_thread_count`` /
``inter_op_thread_count`` (default: ``OMP_NUM_THREADS`` or 1).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default) or default


def _session_options(config: dict) -> ort.SessionOptions:
    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    options.intra_op_num_threads = int(_parameter(config, "intra_op_thread_count", threads))
    options.inter_op_num_threads = int(_parameter(config, "inter_op_thread_count", "1"))
    # Spinning intra-op threads of several sessions slow each other down on few cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class TritonPythonModel:
    """Runs ``<model>/<version>/model.onnx`` with onnxruntime's CPU execution provider."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if os.path.isdir(path):  # Triton's directory form: model.onnx/model.onnx + external data
            path = os.path.join(path, "model.onnx")
        self.session = ort.InferenceSession(
            path, _session_options(config), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }

    def _run(self, request) -> list:
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy()
        results = self.session.run(self.outputs, feed)
        return [
            pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.dtypes[name]))
            for name, value in zip(self.outputs, results, strict=True)
        ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch
                error = pb_utils.TritonError(f"onnxruntime: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
