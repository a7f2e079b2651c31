"""``decode``: IMAGE_BYTES uint8 [n] -> IMAGE uint8 [H, W, 3], SIZE int32 [2] (H, W).

Config parameters: ``max_bytes`` and ``max_pixels`` (limits of an accepted image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss.serving.backend import PythonModel, RequestError
from wsss.serving.imaging import MAX_BYTES, MAX_PIXELS, ImageError, decode_image


class TritonPythonModel(PythonModel):
    name = "decode"

    def setup(self, parameters: dict[str, str]) -> None:
        self.max_bytes = int(parameters.get("max_bytes") or MAX_BYTES)
        self.max_pixels = int(parameters.get("max_pixels") or MAX_PIXELS)

    def process(self, inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict:
        try:
            image = decode_image(inputs["IMAGE_BYTES"], self.max_bytes, self.max_pixels)
        except ImageError as exc:
            raise RequestError(str(exc)) from None
        size = np.array(image.shape[:2], dtype=np.int32)
        return {"IMAGE": image, "SIZE": size}
