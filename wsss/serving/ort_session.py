"""ONNX Runtime session options for a Triton model config, as Triton's ONNX Runtime backend
reads them: used by the CPU substitute backend (``serving/backends/onnxruntime/model.py``) and
by the serving bench's in-process pipeline, so both run the networks alike.

``optimization.graph.level``: -1 basic, 1 extended, anything else all graph optimisations;
``parameters`` ``intra_op_thread_count`` (0 or unset: the cores this process may use shared
by the model's instances, so instances do not oversubscribe them) and
``inter_op_thread_count`` (default 1). Intra-op threads do not spin: spinning threads of
several sessions slow each other down on few cores.
"""

from __future__ import annotations

import onnxruntime as ort

from wsss.serving.crf_layout import cores_per_instance

GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default) or default


def intra_op_threads(config: dict) -> int:
    """The config's ``intra_op_thread_count``, or the cores shared by its instances."""
    threads = int(_parameter(config, "intra_op_thread_count", "0"))
    if threads > 0:
        return threads
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [{}]))
    return cores_per_instance(instances)


def session_options(config: dict) -> ort.SessionOptions:
    """SessionOptions of a model config (JSON form, as Triton passes it to a backend)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(config)
    options.inter_op_num_threads = int(_parameter(config, "inter_op_thread_count", "1"))
    level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
    options.graph_optimization_level = GRAPH_LEVELS.get(
        level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
