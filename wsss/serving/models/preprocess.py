"""``preprocess``: IMAGE uint8 [H, W, 3] -> INPUT float32 [1, 3, h, w] (RGB, 0..255).

The networks normalise inside their graphs, so this only resizes and lays out the batch.
(h, w) = :func:`wsss.serving.imaging.network_size` with config parameters ``max_side`` and
``min_side``: the original size unless the image is larger than ``max_side``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss.serving.backend import PythonModel, RequestError
from wsss.serving.imaging import MAX_SIDE, MIN_SIDE, network_input, network_size


class TritonPythonModel(PythonModel):
    name = "preprocess"

    def setup(self, parameters: dict[str, str]) -> None:
        self.max_side = int(parameters.get("max_side") or MAX_SIDE)
        self.min_side = int(parameters.get("min_side") or MIN_SIDE)

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        image = inputs["IMAGE"]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RequestError(f"IMAGE must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        size = network_size(*image.shape[:2], max_side=self.max_side, min_side=self.min_side)
        return {"INPUT": network_input(image, size)}
