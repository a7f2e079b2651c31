"""A Python-based Triton backend named ``onnxruntime``: CPU development substitute.

The Triton binary shipped in ``nvidia-pytriton`` has no C++ ONNX Runtime backend. Copied to
``<backend-directory>/onnxruntime/model.py`` (``wsss.serving.bundle.assemble_backends`` does it),
this file makes unmodified ``platform: "onnxruntime_onnx"`` models load and serve through the
``onnxruntime`` Python package on CPU. The NVIDIA Triton container uses its real backend instead;
the model configs are the same for both.

Honoured config fields, read as Triton's ONNX Runtime backend reads them: ``input``/``output``
names and data types, ``default_model_filename``, and the session settings of
:mod:`wsss.serving.ort_session` (graph optimisation level, intra-/inter-op threads: by default
the cores shared by the model's instances). Same-shape requests that Triton's dynamic batcher
hands over together run as one batch.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from wsss.serving.ort_session import session_options


class TritonPythonModel:
    """Runs ``<model>/<version>/model.onnx`` with onnxruntime's CPU execution provider."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if os.path.isdir(path):  # Triton's directory form: model.onnx/model.onnx + external data
            path = os.path.join(path, "model.onnx")
        self.session = ort.InferenceSession(
            path, session_options(config), providers=["CPUExecutionProvider"]
        )
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }

    def _feed(self, request) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy()
        return feed

    def _response(self, results: list[np.ndarray]):
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.dtypes[name]))
            for name, value in zip(self.outputs, results, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_batch(self, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Requests whose inputs have the same shapes, as one batch; outputs split back."""
        if len(feeds) == 1:
            return [self.session.run(self.outputs, feeds[0])]
        joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        results = self.session.run(self.outputs, joined)
        cuts = np.cumsum([len(f[self.inputs[0]]) for f in feeds])[:-1]
        per_output = [np.split(r, cuts) for r in results]
        return [list(parts) for parts in zip(*per_output, strict=True)]

    @staticmethod
    def _error(exc: Exception):
        error = pb_utils.TritonError(f"onnxruntime: {type(exc).__name__}: {exc}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                feed = self._feed(request)
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch
                responses[i] = self._error(exc)
                continue
            key = tuple(feed[name].shape[1:] for name in self.inputs) if self.batched else (i,)
            groups.setdefault(key, []).append((i, feed))
        for members in groups.values():
            try:
                outputs = self._run_batch([feed for _, feed in members])
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch
                if len(members) == 1:
                    responses[members[0][0]] = self._error(exc)
                    continue
                outputs = None  # run them one by one to find the bad one
            for n, (i, feed) in enumerate(members):
                try:
                    result = outputs[n] if outputs is not None else self._run_batch([feed])[0]
                    responses[i] = self._response(result)
                except Exception as exc:  # noqa: BLE001
                    responses[i] = self._error(exc)
        return responses
