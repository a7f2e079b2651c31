"""TensorRT engine from an exported ONNX model, checked against ONNX Runtime, for Triton.

``python export/tensorrt.py serving/model_repository/cam_deeplab [--fp16]`` reads the model's
``1/model.onnx`` (written by ``export/onnx.py``), builds an engine with the TensorRT Python API
(ONNX parser, one optimisation profile min/opt/max, a timing cache file) and writes

    <model>/1/model.plan              the bare serialised engine (what Triton's backend loads)
    <model>/configs/tensorrt.pbtxt    platform "tensorrt_plan", KIND_GPU

so one repository serves both ways: the ONNX ``config.pbtxt`` on CPU servers, the engine with
``tritonserver --model-config-name=tensorrt`` (Triton falls back to ``config.pbtxt`` for models
without ``configs/tensorrt.pbtxt``). ``--replace-config`` writes ``config.pbtxt`` instead.

Before anything is written the engine is run with the TensorRT runtime (buffers are torch CUDA
tensors, no pycuda) and compared with ONNX Runtime at the parity sizes.

Plans are specific to the GPU architecture and the TensorRT version: build inside the Triton
container that serves them. Written against the TensorRT 10 API
(``set_memory_pool_limit``, ``build_serialized_network``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); TensorRT 11 is strongly typed, so ``--fp16`` is
refused there (bake reduced precision into the ONNX model instead).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from wsss.export import triton_config as tc
from wsss.export.onnx import network_named, ort_runner, ort_session
from wsss.export.parity import PARITY_SIZES, ParityError, Tolerance, check_parity
from wsss.export.wrappers import INPUT_NAME

Shape = tuple[int, int, int, int]

# One optimisation profile. TensorRT tunes its kernels for ``opt``: keep it at the usual request
# size (VOC photos are about 500 x 375). Triton's max_batch_size is the profile's max batch.
DEFAULT_MIN: Shape = (1, 3, 128, 128)
DEFAULT_OPT: Shape = (1, 3, 512, 512)
DEFAULT_MAX: Shape = (8, 3, 1024, 1024)
DEFAULT_WORKSPACE_GIB = 4.0
DEFAULT_TIMING_CACHE = Path("build/tensorrt-timing.cache")
CONFIG_NAME = "tensorrt"  # configs/tensorrt.pbtxt, picked by --model-config-name=tensorrt
# FP16 engines cannot meet the FP32 bounds; the val-set mIoU delta is the real gate for them.
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=1e-2, min_agreement=0.99)


class EngineError(RuntimeError):
    """TensorRT refused the model, or the build or a run failed (message says which)."""


class TensorRTUnavailable(EngineError):
    """No ``tensorrt`` module or no CUDA GPU here."""


@dataclass(frozen=True)
class Profile:
    """An optimisation profile for the image input: [B, 3, H, W] at min, opt and max."""

    min: Shape = DEFAULT_MIN
    opt: Shape = DEFAULT_OPT
    max: Shape = DEFAULT_MAX

    def validate(self) -> None:
        """Raises ValueError unless min <= opt <= max per axis, 3 channels and min batch 1."""
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ValueError(f"{label} shape {format_shape(shape)}: expected Bx3xHxW, all > 0")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(
                f"profile needs min <= opt <= max on every axis, got {format_shape(self.min)}, "
                f"{format_shape(self.opt)}, {format_shape(self.max)}"
            )
        if self.min[0] != 1:
            raise ValueError(
                f"min batch must be 1 (Triton sends any batch up to max), got {self.min[0]}"
            )

    def contains(self, shape: Sequence[int]) -> bool:
        return all(a <= s <= c for a, s, c in zip(self.min, shape, self.max, strict=True))


def parse_shape(text: str) -> Shape:
    """ "1x3x512x512" -> (1, 3, 512, 512); ValueError names the bad text."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r}: expected BxCxHxW, e.g. 1x3x512x512") from None
    if len(shape) != 4:
        raise ValueError(f"shape {text!r}: expected 4 numbers BxCxHxW, e.g. 1x3x512x512")
    return shape  # type: ignore[return-value]


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


# ---------------------------------------------------------------------------------------------
# TensorRT (imported lazily: the module and its CLI errors work without it)


def require_tensorrt():
    """The ``tensorrt`` module, after checking that a CUDA GPU is visible; EngineError if not."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"the tensorrt Python package cannot be imported ({exc}); build engines inside the "
            "NVIDIA TensorRT or Triton container that will serve them"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU visible to PyTorch: TensorRT engines need one")
    return trt


def _network_flags(trt) -> int:
    """Explicit batch: a flag before TensorRT 10, the only mode (flag deprecated) since."""
    if int(trt.__version__.split(".")[0]) < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def build_engine(
    onnx_path: Path,
    profile: Profile,
    *,
    fp16: bool = False,
    tf32: bool = False,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: Path | None = DEFAULT_TIMING_CACHE,
    say: Callable[[str], None] = print,
) -> bytes:
    """Serialised engine (plan bytes) for the ONNX model at ``onnx_path``.

    FP32 by default with TF32 switched off, so the engine can meet the FP32 parity bounds;
    ``fp16`` lets TensorRT pick FP16 kernels (TensorRT 10 builder flag). ``timing_cache`` is read
    if it exists and written back after the build (kernel timings: faster rebuilds).
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file also finds external weight files next to the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [INPUT_NAME]:
        raise EngineError(
            f"{onnx_path}: expected one input {INPUT_NAME}, got {[t.name for t in inputs]}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineError(
                f"TensorRT {trt.__version__} is strongly typed (no FP16 builder flag): convert "
                "the ONNX model to FP16 first (e.g. NVIDIA ModelOpt AutoCast)"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(trt.BuilderFlag, "TF32") and not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)

    cache_bytes = b""
    if timing_cache is not None and timing_cache.is_file():
        cache_bytes = timing_cache.read_bytes()
        say(f"timing cache: read {timing_cache} ({len(cache_bytes)} bytes)")
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT engine build failed (see its log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tc.write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class EngineRunner:
    """Runs a plan with the TensorRT runtime: images numpy [B, 3, H, W] -> {output: numpy}.

    Input and outputs live in torch CUDA tensors whose pointers are handed to the execution
    context (``set_tensor_address``); ``execute_async_v3`` runs on the current torch stream.
    """

    def __init__(self, plan: bytes):
        import torch

        trt = require_tensorrt()
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError("TensorRT could not deserialise the plan (other version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT8: torch.int8,
            trt.DataType.BOOL: torch.bool,
        }
        for optional, dtype in (
            ("INT64", torch.int64),
            ("BF16", torch.bfloat16),
            ("UINT8", torch.uint8),
        ):
            if hasattr(trt.DataType, optional):
                self.dtypes[getattr(trt.DataType, optional)] = dtype

    def _dtype(self, name: str):
        trt_type = self.engine.get_tensor_dtype(name)
        if trt_type not in self.dtypes:
            raise EngineError(f"{name}: unsupported TensorRT data type {trt_type}")
        return self.dtypes[trt_type]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        (name,) = self.inputs
        x = torch.from_numpy(np.ascontiguousarray(images)).to("cuda", self._dtype(name))
        if not self.context.set_input_shape(name, tuple(x.shape)):
            raise EngineError(
                f"input shape {format_shape(x.shape)} is outside the engine's profile"
            )
        self.context.set_tensor_address(name, x.data_ptr())
        results = {}
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            if min(shape, default=0) < 0:
                raise EngineError(f"{out}: shape {shape} unresolved after setting the input shape")
            results[out] = torch.empty(shape, dtype=self._dtype(out), device="cuda")
            self.context.set_tensor_address(out, results[out].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see its log above)")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in results.items()}


# ---------------------------------------------------------------------------------------------
# Repository


def _network(model: onnx.ModelProto):
    """The exported Network an ONNX model came from (its ``network`` metadata), or None."""
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return network_named(props.get("network", ""))
    except KeyError:
        return None


def network_tolerances(model: onnx.ModelProto) -> dict[str, Tolerance]:
    """The FP32 parity bounds export/onnx.py used for this model (default bounds otherwise)."""
    network = _network(model)
    return dict(network.tolerances) if network else {}


def tensorrt_config(name: str, model: onnx.ModelProto, profile: Profile, count: int = 1) -> dict:
    """``tensorrt_plan`` config: I/O from the ONNX graph, max_batch_size = the profile's max batch.

    ``label_filename`` as the ONNX config sets it, from the model's ``network`` metadata.
    """
    inputs, outputs = tc.onnx_tensor_specs(model)
    network = _network(model)
    if network is not None:  # not one of ours: no labels
        outputs = tc.with_labels(outputs, network.labelled_outputs())
    return tc.model_config(
        name, tc.TRT_PLATFORM, profile.max[0], inputs, outputs, kind=tc.KIND_GPU, count=count
    )


@dataclass
class Built:
    """What a TensorRT build wrote."""

    plan_path: Path
    config_path: Path
    parity_passed: bool


def build_model(
    model_dir: Path,
    profile: Profile | None = None,
    *,
    version: int = 1,
    fp16: bool = False,
    tf32: bool = False,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: Path | None = DEFAULT_TIMING_CACHE,
    count: int = 1,
    replace_config: bool = False,
    sizes: Sequence[tuple[int, int, int]] = PARITY_SIZES,
    say: Callable[[str], None] = print,
) -> Built:
    """Engine for ``model_dir/<version>/model.onnx``, parity-checked, written into the model dir."""
    onnx_path = locate_onnx(model_dir, version)
    profile = profile or Profile()
    profile.validate()
    outside = [s for s in sizes if not profile.contains((s[0], 3, s[1], s[2]))]
    if outside:
        raise ValueError(
            f"parity sizes {outside} lie outside the profile {format_shape(profile.min)} .. "
            f"{format_shape(profile.max)}"
        )
    model = onnx.load(str(onnx_path), load_external_data=False)
    name = model_dir.name
    precision = "FP16" if fp16 else "FP32"
    span = ", ".join(f"{k} {format_shape(getattr(profile, k))}" for k in ("min", "opt", "max"))
    say(f"{name}: building a {precision} engine, optimisation profile {span}")
    plan = build_engine(
        onnx_path, profile, fp16=fp16, tf32=tf32, workspace_gib=workspace_gib,
        timing_cache=timing_cache, say=say,
    )  # fmt: skip
    output_names = [o.name for o in model.graph.output]
    report = check_parity(
        name,
        ort_runner(ort_session(onnx_path), output_names),
        EngineRunner(plan),
        output_names,
        sizes,
        names=("onnxruntime", "tensorrt"),
        tolerances=FP16_TOLERANCE if fp16 else network_tolerances(model),
    )
    for line in report.lines():
        say(line)
    if not report.passed:
        raise ParityError(f"{name}: TensorRT disagrees with ONNX Runtime: {report.failures()}")

    plan_path = model_dir / str(version) / "model.plan"
    tc.write_bytes(plan_path, plan)
    config_path = model_dir / ("config.pbtxt" if replace_config else f"configs/{CONFIG_NAME}.pbtxt")
    tc.write_config(
        config_path,
        tensorrt_config(name, model, profile, count),
        [
            f"Generated by export/tensorrt.py from {onnx_path.resolve()} ({precision}).",
            f"Optimisation profile: {span}; max_batch_size = the max batch.",
            "The plan only loads with the TensorRT version and GPU architecture it was built on.",
        ],
    )
    say(f"{name}: wrote {plan_path} and {config_path}")
    return Built(plan_path, config_path, report.passed)


def locate_onnx(model_dir: Path, version: int) -> Path:
    """``model_dir/<version>/model.onnx`` (or Triton's directory form ``model.onnx/model.onnx``)."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    path = model_dir / str(version) / "model.onnx"
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (export the ONNX model first: export/onnx.py)"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export/tensorrt.py",
        description="Build a TensorRT engine (model.plan) from a Triton model directory's ONNX "
        "model, check it against ONNX Runtime, and write it with a tensorrt_plan config. Needs "
        "the tensorrt Python package and a CUDA GPU (the NVIDIA Triton container).",
        epilog="example: python export/tensorrt.py serving/model_repository/cam_deeplab --fp16\n"
        f"serve with: tritonserver --model-repository=... --model-config-name={CONFIG_NAME}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model_dir", type=Path, help="model directory written by export/onnx.py (has 1/model.onnx)"
    )
    parser.add_argument(
        "--min-shape",
        default=format_shape(DEFAULT_MIN),
        help=f"smallest input BxCxHxW of the profile (default {format_shape(DEFAULT_MIN)})",
    )
    parser.add_argument(
        "--opt-shape",
        default=format_shape(DEFAULT_OPT),
        help=f"input shape TensorRT tunes for (default {format_shape(DEFAULT_OPT)})",
    )
    parser.add_argument(
        "--max-shape",
        default=format_shape(DEFAULT_MAX),
        help=f"largest input; its batch is max_batch_size (default {format_shape(DEFAULT_MAX)})",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help=f"allow FP16 kernels (parity bounds loosen to {FP16_TOLERANCE.describe()}, "
        f"{100 * FP16_TOLERANCE.min_agreement:g}%% argmax agreement)",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 kernels for FP32 layers (off by default)"
    )
    parser.add_argument(
        "--workspace-gib",
        type=float,
        default=DEFAULT_WORKSPACE_GIB,
        help=f"builder workspace memory limit in GiB (default {DEFAULT_WORKSPACE_GIB:g})",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=DEFAULT_TIMING_CACHE,
        help=f"timing cache, read if present and written back (default {DEFAULT_TIMING_CACHE})",
    )
    parser.add_argument("--no-timing-cache", action="store_true", help="use no timing cache file")
    parser.add_argument("--version", type=int, default=1, help="model version folder (default: 1)")
    parser.add_argument(
        "--instances", type=int, default=1, help="instance_group count per GPU (default: 1)"
    )
    parser.add_argument(
        "--replace-config",
        action="store_true",
        help=f"write config.pbtxt (GPU-only repository) instead of configs/{CONFIG_NAME}.pbtxt",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = Profile(
            parse_shape(args.min_shape), parse_shape(args.opt_shape), parse_shape(args.max_shape)
        )
        profile.validate()
        if args.version < 1 or args.instances < 1 or args.workspace_gib <= 0:
            raise ValueError("--version and --instances must be >= 1, --workspace-gib > 0")
        build_model(
            args.model_dir,
            profile,
            version=args.version,
            fp16=args.fp16,
            tf32=args.tf32,
            workspace_gib=args.workspace_gib,
            timing_cache=None if args.no_timing_cache else args.timing_cache,
            count=args.instances,
            replace_config=args.replace_config,
        )
    except (ParityError, EngineError) as exc:
        if isinstance(exc, TensorRTUnavailable):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, tc.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
