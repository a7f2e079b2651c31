"""Triton ``config.pbtxt`` files, generated from the exported model's own inputs and outputs.

A config is built as plain nested Python data (dicts, lists, scalars, :class:`Token` for enum
values) and rendered to protobuf text format by :func:`to_pbtxt`, so any ModelConfig message can
be written the same way: ``onnxruntime_onnx`` and ``tensorrt_plan`` models today, ensembles
(``ensemble_scheduling { step [...] }``, with :func:`map_entries` for ``input_map``) later.
The tests parse every generated file with Triton's own ``ModelConfig`` protobuf.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from wsss.serving.imaging import MAX_SIDE

KIND_CPU = "KIND_CPU"
KIND_GPU = "KIND_GPU"
ORT_PLATFORM = "onnxruntime_onnx"
TRT_PLATFORM = "tensorrt_plan"
LABELS_FILE = "labels.txt"

# ONNX element type -> Triton data type (the ones an image network can produce).
ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


# Model warm-up (``model_warmup``): one zero image of the ``preprocess`` model's largest side,
# the size it sends for every photo larger than that, so the first request is not the one that
# pays for ONNX Runtime's first-run allocations.
WARM_UP_SIDE = MAX_SIDE


class Token(str):
    """An enum value (``KIND_CPU``, ``TYPE_FP32``): written without quotes."""


class ConfigError(ValueError):
    """The model cannot be described by a batched Triton config (the message says why)."""


def _scalar(value: Any) -> str:
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid text-format string literal for printable text
    raise TypeError(f"cannot write {type(value).__name__} into a config")


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a nested mapping; lists of mappings become repeated messages."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            body = to_pbtxt(value, indent + 1)
            lines.append(f"{pad}{key} {{\n{body}{pad}}}" if body else f"{pad}{key} {{ }}")
        elif isinstance(value, list | tuple):
            if value and all(isinstance(v, Mapping) for v in value):
                items = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value]
                lines.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def map_entries(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A protobuf map field (``parameters``, ``input_map``) as its repeated key/value entries."""
    return [{"key": k, "value": v} for k, v in mapping.items()]


def tensor_spec(
    name: str, data_type: str, dims: Sequence[int], label_filename: str | None = None
) -> dict[str, Any]:
    """One ``input``/``output`` entry; ``dims`` without the batch dimension, -1 = variable."""
    return {
        "name": name,
        "data_type": Token(data_type),
        "dims": [int(d) for d in dims],
        "label_filename": label_filename,
    }


def onnx_tensor_specs(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX graph as Triton tensor specs, batch dimension removed.

    Each tensor's first dimension must be symbolic (the batch); other symbolic or unknown
    dimensions become -1. Initialisers listed among the graph inputs are skipped.
    """
    initialisers = {t.name for t in model.graph.initializer}

    def specs(values) -> list[dict]:
        out = []
        for value in values:
            if value.name in initialisers:
                continue
            tensor = value.type.tensor_type
            if tensor.elem_type not in ONNX_TO_TRITON:
                raise ConfigError(f"{value.name}: ONNX element type {tensor.elem_type} unsupported")
            dims = list(tensor.shape.dim)
            if not dims or dims[0].HasField("dim_value"):
                raise ConfigError(f"{value.name}: no dynamic batch dimension, cannot batch")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]
            out.append(tensor_spec(value.name, ONNX_TO_TRITON[tensor.elem_type], shape))
        return out

    return specs(model.graph.input), specs(model.graph.output)


def warmup_entries(inputs: list[dict], side: int = WARM_UP_SIDE) -> list[dict[str, Any]]:
    """``model_warmup`` with one sample of batch 1: zeros, variable dims set to ``side``."""
    tensors = {
        spec["name"]: {
            "data_type": spec["data_type"],
            "dims": [side if d < 0 else d for d in spec["dims"]],
            "zero_data": True,
        }
        for spec in inputs
    }
    return [{"name": f"zeros_{side}", "batch_size": 1, "inputs": map_entries(tensors)}]


def model_config(
    name: str,
    platform: str,
    max_batch_size: int,
    inputs: list[dict],
    outputs: list[dict],
    kind: str = KIND_CPU,
    count: int = 1,
    dynamic_batching: bool = True,
    parameters: Mapping[str, str] | None = None,
    warmup_side: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ModelConfig as nested data; ``extra`` adds any other ModelConfig field verbatim.

    ``dynamic_batching {}`` lets Triton merge requests of the same image size (requests of
    different sizes run one by one: variable H x W does not batch) without a queue delay (on
    CPU a delay gains no throughput: serving bench); ``warmup_side``: a
    :func:`warmup_entries` sample of that side.
    """
    if kind not in (KIND_CPU, KIND_GPU):
        raise ConfigError(f"instance kind {kind!r}: expected {KIND_CPU} or {KIND_GPU}")
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": [{"count": count, "kind": Token(kind)}],
    }
    if dynamic_batching:
        config["dynamic_batching"] = {}
    if warmup_side:
        config["model_warmup"] = warmup_entries(inputs, warmup_side)
    if parameters:
        config["parameters"] = map_entries({k: {"string_value": v} for k, v in parameters.items()})
    config.update(extra)
    return config


def with_labels(outputs: list[dict], names: Mapping[str, str]) -> list[dict]:
    """Outputs with ``label_filename`` set for the outputs named in ``names``."""
    return [{**o, "label_filename": names.get(o["name"], o.get("label_filename"))} for o in outputs]


def write_bytes(path: Path, data: bytes) -> None:
    """Writes a repository file atomically (temporary name, then rename): a server polling the
    repository never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """:func:`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode())


def write_config(path: Path, config: Mapping[str, Any], comment: Sequence[str] = ()) -> None:
    """``config.pbtxt`` with a ``#`` comment header (generator, source) above the message."""
    header = "".join(f"# {line}\n" for line in comment)
    write_text(path, header + to_pbtxt(config))


def write_labels(path: Path, names: Sequence[str]) -> None:
    """Triton's ``label_filename``: one class name per line, line i = index i of the output."""
    write_text(path, "".join(f"{n}\n" for n in names))
