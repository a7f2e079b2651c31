"""Export: the library side of ``export/onnx.py`` and ``export/tensorrt.py``.

wrappers      the serving contract around the untouched networks (IMAGES -> SCORES, CAMS | PROBS)
onnx          ONNX export of a run into the Triton repository (exporter and opset pinned there)
parity        exported model vs reference (PyTorch, ONNX Runtime) at two sizes
triton_config config.pbtxt generation from the model's own inputs/outputs
tensorrt      TensorRT engine from the ONNX model (runs where TensorRT and a GPU exist)

Nothing heavy is imported here; import the submodule you need.
"""
