"""``<method>_cam_post``: SIZE, SCORES [1, C], CAMS [1, C, h, w] -> CAMs at the image size.

Outputs SCORES float32 [C], CAMS float32 [C, H, W] (bilinear, as in training) and CLASS_NAMES
bytes [C]. The class names come from the config parameter ``class_names`` (a JSON list written
by :mod:`wsss.export.ensembles` from the exported network's ONNX metadata), hence one such
model per method.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from wsss.serving.backend import PythonModel, RequestError
from wsss.serving.maps import resize_bilinear


class TritonPythonModel(PythonModel):
    name = "cam_post"

    def setup(self, parameters: dict[str, str]) -> None:
        names = json.loads(parameters.get("class_names") or "[]")
        self.class_names = np.array([n.encode() for n in names], dtype=np.object_)

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        size, scores, cams = inputs["SIZE"], inputs["SCORES"], inputs["CAMS"]
        if cams.ndim != 4 or cams.shape[0] != 1 or scores.shape != cams.shape[:2]:
            raise RequestError(f"bad shapes: SCORES {scores.shape}, CAMS {cams.shape}")
        if len(self.class_names) != cams.shape[1]:  # a repository error, not the client's
            raise RuntimeError(
                f"{len(self.class_names)} class names in the config, {cams.shape[1]} CAMs"
            )
        height, width = (int(v) for v in size.reshape(-1)[:2])
        return {
            "SCORES": np.asarray(scores[0], dtype=np.float32),
            "CAMS": resize_bilinear(cams[0], (height, width)),
            "CLASS_NAMES": self.class_names,
        }
