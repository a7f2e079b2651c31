"""ONNX export of a run's two networks into a Triton model repository, checked against PyTorch.

``python export/onnx.py RUN_DIR [--repository serving/model_repository]`` writes

    <repository>/<method>_cam_net/{config.pbtxt, labels.txt, 1/model.onnx}   classifier.pt
    <repository>/<method>_deeplab/{config.pbtxt, labels.txt, 1/model.onnx}   deeplab.pt

Each network is wrapped (:mod:`wsss.export.wrappers`), exported with dynamic batch, height and
width, checked with ``onnx.checker``, labelled with ``metadata_props`` (method, class names,
mean/std, source checkpoint, code version) and compared with PyTorch in ONNX Runtime at two
sizes (:mod:`wsss.export.parity`). Only a model that passes replaces the repository's file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from wsss.checkpoint import CheckpointError, code_version, load_classifier, load_deeplab
from wsss.export import triton_config as tc
from wsss.export.parity import PARITY_SIZES, ParityError, ParityReport, Tolerance, check_parity
from wsss.export.wrappers import (
    CAM_EPS,
    CAM_OUTPUTS,
    INPUT_NAME,
    SEG_OUTPUTS,
    CamExport,
    SegExport,
)

# The exporter, pinned here and nowhere else: the TorchScript-based exporter (dynamo=False) at
# opset 17. Measured on the smoke checkpoints of every method, the dynamo exporter (opset 18)
# was 5-10x slower (20-40 s per MobileNetV2 network on the shared 2-core machine, 500 s for
# KTSE, against 2-6 s) and silently specialised KTSE's adaptive pooling to the example size
# (scores off by 8e-3 at other sizes), whereas the TorchScript exporter with the exact dynamic
# adaptive-pool symbolic below matches PyTorch at every size. Opset 17 is accepted by TensorRT
# 8.6+/10 and every recent Triton ONNX Runtime backend. The TorchScript exporter is deprecated
# but present in torch 2.11 and 2.13 (both used here); when it goes, move to dynamo (opset 18,
# + onnxscript) and let the parity check judge.
EXPORTER = "torchscript"
OPSET = 17
# Older ONNX Runtime builds (Triton's) reject newer IR versions; the exporter writes 8.
MAX_IR_VERSION = 10
# Example input for tracing: batch >= 2 and H != W, so no dimension is mistaken for a constant.
EXAMPLE_SHAPE = (2, 3, 320, 416)
DEFAULT_REPOSITORY = Path("serving/model_repository")
DEFAULT_MAX_BATCH = 8


class ExportError(RuntimeError):
    """torch.onnx.export or onnx.checker refused a network (message names it)."""


@dataclass(frozen=True)
class Network:
    """One exported network of a run: checkpoint, wrapper, outputs and the class axis names."""

    suffix: str  # model name = f"{method}_{suffix}"
    checkpoint: str
    load: Callable[[Path], tuple[nn.Module, dict]]
    wrap: Callable[[nn.Module], nn.Module]
    outputs: tuple[str, ...]
    foreground_only: bool  # class axis = class_names[1:] (CAM net) or all names (DeepLab)
    description: str
    tolerances: dict[str, Tolerance]  # parity bounds per output (see wsss.export.parity)

    def channel_names(self, meta: dict) -> list[str]:
        """Class names along the class axis of this network's outputs (checkpoint metadata)."""
        names = list(meta["class_names"])
        return names[1:] if self.foreground_only else names

    def labelled_outputs(self) -> dict[str, str]:
        """{output: labels file} for Triton's ``label_filename``: the 1-D class scores only
        (Triton's classification extension reads a label per element; maps have H x W of them).
        """
        return {self.outputs[0]: tc.LABELS_FILE} if self.foreground_only else {}


NETWORKS: tuple[Network, ...] = (
    Network(
        "cam_net",
        "classifier.pt",
        load_classifier,
        CamExport,
        CAM_OUTPUTS,
        True,
        "IMAGES float32 [B, 3, H, W] RGB 0..255 -> SCORES [B, C] class logits, "
        "CAMS [B, C, H, W] single-scale CAMs, max-normalised per class",
        {"SCORES": Tolerance(rtol=1e-4), "CAMS": Tolerance(rtol=1e-3)},
    ),
    Network(
        "deeplab",
        "deeplab.pt",
        load_deeplab,
        SegExport,
        SEG_OUTPUTS,
        False,
        "IMAGES float32 [B, 3, H, W] RGB 0..255 -> PROBS [B, C+1, H, W] softmax probabilities",
        {"PROBS": Tolerance()},
    ),
)


def network_named(suffix: str) -> Network:
    """The Network whose model-name suffix (and ONNX ``network`` metadata) is ``suffix``."""
    for network in NETWORKS:
        if network.suffix == suffix:
            return network
    raise KeyError(f"unknown network {suffix!r}; expected one of {[n.suffix for n in NETWORKS]}")


@dataclass
class Exported:
    """What one network's export wrote."""

    name: str
    onnx_path: Path
    config_path: Path
    parity: ParityReport


# ---------------------------------------------------------------------------------------------
# Exact adaptive average pooling for dynamic input sizes (TorchScript exporter symbolic).


def _adaptive_avg_pool2d(g, x, output_size):
    """aten::adaptive_avg_pool2d for any input size: Y = A_h X A_w^T.

    A_s [s, n] averages input rows start_i = floor(i n / s) .. end_i = ceil((i + 1) n / s) - 1,
    PyTorch's bins exactly, built from the runtime size n. The built-in symbolic needs static
    sizes (and the dynamo exporter bakes the example's kernel), which KTSE's pyramid pooling
    would get wrong at every other image size.
    """
    from torch.onnx import symbolic_helper

    sizes = symbolic_helper._parse_arg(output_size, "is")
    if any(s is None for s in sizes):
        raise ExportError("adaptive_avg_pool2d with a None output size is not supported")
    if list(sizes) == [1, 1]:
        return g.op("GlobalAveragePool", x)

    def const(value) -> object:
        return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))

    shape = g.op("Shape", x)

    def averaging(axis: int, s: int):
        n = g.op("Gather", shape, const(axis))  # scalar
        i = const(list(range(s)))
        start = g.op("Div", g.op("Mul", i, n), const(s))
        ceil_numerator = g.op("Add", g.op("Mul", g.op("Add", i, const(1)), n), const(s - 1))
        end = g.op("Div", ceil_numerator, const(s))
        rows = g.op("Unsqueeze", g.op("Range", const(0), n, const(1)), const([0]))  # [1, n]
        start2, end2 = g.op("Unsqueeze", start, const([1])), g.op("Unsqueeze", end, const([1]))
        inside = g.op("And", g.op("GreaterOrEqual", rows, start2), g.op("Less", rows, end2))
        count = g.op("Cast", g.op("Sub", end2, start2), to_i=onnx.TensorProto.FLOAT)
        return g.op("Div", g.op("Cast", inside, to_i=onnx.TensorProto.FLOAT), count)  # [s, n]

    rows = averaging(2, sizes[0])
    cols = averaging(3, sizes[1])
    pooled = g.op("MatMul", rows, x)  # [s, H] @ [B, C, H, W] -> [B, C, s, W]
    return g.op("MatMul", pooled, g.op("Transpose", cols, perm_i=[1, 0]))


@contextlib.contextmanager
def _custom_symbolics():
    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", _adaptive_avg_pool2d, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", OPSET)


# ---------------------------------------------------------------------------------------------
# Export


def _set_output_shapes(model: onnx.ModelProto, example: Sequence[torch.Tensor]) -> None:
    """Writes each output's shape: batch/height/width symbolic, every other axis its size.

    The TorchScript exporter leaves e.g. the class axis of the upsampled CAMs symbolic; Triton
    configs and readers of the model want the number of classes there.
    """
    for value, tensor in zip(model.graph.output, example, strict=True):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(tensor.shape):
            dim = dims.add()
            if axis == 0:
                dim.dim_param = "batch"
            elif tensor.ndim == 4 and axis == 2:
                dim.dim_param = "height"
            elif tensor.ndim == 4 and axis == 3:
                dim.dim_param = "width"
            else:
                dim.dim_value = int(size)


def torchscript_export(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> int:
    """``torch.onnx.export`` with the pinned exporter and opset and the custom symbolics.

    Returns how many TracerWarnings the trace raised (shape-dependent Python code frozen at the
    example's shape); the exporter's DeprecationWarning is expected and swallowed. Raises
    ExportError with the exporter's own first line when the module cannot be exported.
    """
    with warnings.catch_warnings(record=True) as caught, _custom_symbolics():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,  # EXPORTER = "torchscript"
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; report its line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch.onnx.export failed: {first}") from exc
        finally:
            module.eval()  # the exporter restores the module's mode: keep inference mode
    return sum(issubclass(w.category, torch.jit.TracerWarning) for w in caught)


def export_onnx(
    wrapper: nn.Module, path: Path, output_names: Sequence[str], metadata: dict[str, str]
) -> tuple[onnx.ModelProto, int]:
    """Exports ``wrapper`` to ``path`` (dynamic B, H, W), checked; returns (model, tracer warnings).

    Raises ExportError with the exporter's own first line when a network cannot be exported.
    """
    wrapper.eval()
    example = torch.rand(*EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0)) * 255
    spatial = {0: "batch", 2: "height", 3: "width"}
    with torch.inference_mode():
        outputs = wrapper(example)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    dynamic_axes = {INPUT_NAME: spatial}
    for name, out in zip(output_names, outputs, strict=True):
        dynamic_axes[name] = spatial if out.ndim == 4 else {0: "batch"}
    tracer_warnings = torchscript_export(
        wrapper, example, path, [INPUT_NAME], output_names, dynamic_axes
    )

    model = onnx.load(str(path))
    _set_output_shapes(model, outputs)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "wsss"
    model.doc_string = metadata.get("description", "")
    onnx.helper.set_model_props(model, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker: {str(exc).strip().splitlines()[0]}") from exc
    onnx.save(model, str(path))
    return model, tracer_warnings


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_metadata(meta: dict, network: Network, checkpoint: Path) -> dict[str, str]:
    """``metadata_props`` of an exported network: all strings, lists and dicts as JSON."""
    props = {
        "method": meta["method"],
        "network": network.suffix,
        "description": network.description,
        # Index 0 is "background"; the class axis of this model's outputs is channel_names.
        "class_names": json.dumps(list(meta["class_names"])),
        "channel_names": json.dumps(network.channel_names(meta)),
        "input": f"{INPUT_NAME} float32 [B, 3, H, W], RGB, 0..255; normalisation inside",
        "normalization": json.dumps({"mean": list(meta["mean"]), "std": list(meta["std"])}),
        "backbone": json.dumps(meta["backbone"]),
        "source_checkpoint": str(checkpoint.resolve()),
        "source_checkpoint_sha256": _sha256(checkpoint),
        "training_code_version": str(meta.get("code_version", "")),
        "code_version": code_version(),
        "exporter": f"torch {torch.__version__} {EXPORTER}",
        "opset": str(OPSET),
    }
    for key, value in meta.get("export_metadata", {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    if network.foreground_only:
        props["cam"] = json.dumps(
            {"scales": [1.0], "flip": False, "normalize": "max", "eps": CAM_EPS}
        )
    return props


def ort_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session that does not spin idle threads.

    Spinning intra-op threads of several sessions in one process slow each other down on few
    cores (measured: latency doubled on 2 cores), hence ``allow_spinning = 0``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (physical cores)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_runner(wrapper: nn.Module, names: Sequence[str]):
    """images [B, 3, H, W] numpy -> {output name: numpy} through the PyTorch wrapper."""

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = wrapper.eval()(torch.from_numpy(images))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(names, out, strict=True)}

    return run


def ort_runner(session, names: Sequence[str]):
    """images [B, 3, H, W] numpy -> {output name: numpy} through an ONNX Runtime session."""

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(list(names), {INPUT_NAME: images}), strict=True))

    return run


def export_network(network: Network, run_dir: Path, repository: Path, **options) -> Exported:
    """Exports one network of ``run_dir`` into ``repository``; raises ParityError on mismatch.

    ``options``: those of :func:`export_module`.
    """
    checkpoint = run_dir / network.checkpoint
    model, meta = network.load(checkpoint)
    return export_module(network, model, meta, checkpoint, repository, **options)


def export_module(
    network: Network,
    model: nn.Module,
    meta: dict,
    source: Path,
    repository: Path,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    kind: str = tc.KIND_CPU,
    count: int = 1,
    version: int = 1,
    sizes: Sequence[tuple[int, int, int]] = PARITY_SIZES,
    say: Callable[[str], None] = print,
) -> Exported:
    """Exports ``network.wrap(model)`` as ``<meta["method"]>_<network.suffix>`` into
    ``repository``: ONNX (checked, parity with PyTorch at ``sizes``), config.pbtxt, labels.txt.

    ``meta``: method, class_names (background first), mean, std, backbone (checkpoint
    metadata); ``source``: the weights file the model came from (named and hashed in the ONNX
    metadata). Raises ParityError on mismatch; nothing is replaced then.
    """
    wrapper = network.wrap(model)
    name = f"{meta['method']}_{network.suffix}"
    model_dir = repository / name
    target = model_dir / str(version) / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="wsss-export-") as tmp:
        staged = Path(tmp) / "model.onnx"
        try:
            onnx_model, traced = export_onnx(
                wrapper, staged, network.outputs, onnx_metadata(meta, network, source)
            )
        except ExportError as exc:
            raise ExportError(f"{name}: {exc}") from exc
        if traced:
            say(
                f"{name}: {traced} tracer warning(s) (shape-dependent Python code traced as "
                "constants); the parity check at two sizes decides whether they matter"
            )
        session = ort_session(staged)
        report = check_parity(
            name,
            torch_runner(wrapper, network.outputs),
            ort_runner(session, network.outputs),
            network.outputs,
            sizes,
            tolerances=network.tolerances,
        )
        del session
        for line in report.lines():
            say(line)
        if not report.passed:
            raise ParityError(f"{name}: ONNX Runtime disagrees with PyTorch: {report.failures()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.copyfile(staged, partial)
        os.replace(partial, target)

    inputs, outputs = tc.onnx_tensor_specs(onnx_model)
    outputs = tc.with_labels(outputs, network.labelled_outputs())
    config = tc.model_config(
        name, tc.ORT_PLATFORM, max_batch_size, inputs, outputs, kind, count,
        warmup_side=tc.WARM_UP_SIDE,
    )  # fmt: skip
    tc.write_labels(model_dir / tc.LABELS_FILE, network.channel_names(meta))
    config_path = model_dir / "config.pbtxt"
    axis = "foreground classes" if network.foreground_only else "background + classes"
    comment = [
        f"Generated by export/onnx.py from {source.resolve()}; re-export to change.",
        network.description,
        f"labels.txt: names along the class axis ({axis}).",
    ]
    tc.write_config(config_path, config, comment)
    plan = target.with_name("model.plan")
    if plan.exists():
        say(f"{name}: {plan} was built from the previous ONNX model: rebuild it")
    say(f"{name}: wrote {target} and {config_path}")
    return Exported(name, target, config_path, report)


def export_run(run_dir: Path, repository: Path, **options) -> list[Exported]:
    """Both networks of a run directory; every checkpoint is checked before anything is written."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    for network in NETWORKS:
        path = run_dir / network.checkpoint
        if not path.is_file():
            stage = "cls" if network.suffix == "cam_net" else "seg"
            raise CheckpointError(f"{path}: no such file (run the {stage} stage of this run first)")
    return [export_network(n, run_dir, repository, **options) for n in NETWORKS]


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export/onnx.py",
        description="Export a run's CAM network (classifier.pt) and DeepLab (deeplab.pt) to ONNX "
        "models in a Triton model repository, each checked against PyTorch in ONNX Runtime at "
        f"{' and '.join('x'.join(map(str, s)) for s in PARITY_SIZES)} (batch x height x width).",
        epilog="examples: python export/onnx.py runs/cam-synthetic-smoke; "
        "python export/onnx.py --imagenet (no training: ImageNet MobileNetV2 CAMs over the VOC "
        "classes, endpoints imagenet_cam and imagenet_segment)",
    )
    parser.add_argument(
        "run_dir", type=Path, nargs="?", help="run directory with classifier.pt and deeplab.pt"
    )
    parser.add_argument(
        "--imagenet",
        action="store_true",
        help="export the imagenet source instead of a run: torchvision's ImageNet MobileNetV2 "
        "as a CAM network over the 20 VOC classes (imagenet_cam_net, imagenet_cam_seg) and "
        "write its ensembles with the shared models",
    )
    parser.add_argument(
        "--imagenet-table",
        type=Path,
        help="ImageNet -> class table for --imagenet (default: wsss/imagenet/imagenet_voc.tsv; "
        "build another with python -m wsss.imagenet.build_table --roots FILE.json)",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help=f"Triton model repository to write into (default: {DEFAULT_REPOSITORY})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"max_batch_size of the configs (default: {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="instance_group KIND_GPU (default KIND_CPU: runs on the local CPU server too)",
    )
    parser.add_argument(
        "--instances", type=int, default=1, help="instance_group count per model (default: 1)"
    )
    parser.add_argument(
        "--version", type=int, default=1, help="model version folder to write (default: 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.instances < 1 or args.version < 1:
        print("error: --max-batch-size, --instances and --version must be >= 1", file=sys.stderr)
        return 2
    if (args.run_dir is None) == (not args.imagenet):
        parser.error("give either a run directory or --imagenet")
    if args.imagenet_table and not args.imagenet:
        parser.error("--imagenet-table goes with --imagenet")
    options = {
        "max_batch_size": args.max_batch_size,
        "kind": tc.KIND_GPU if args.gpu else tc.KIND_CPU,
        "count": args.instances,
        "version": args.version,
    }
    try:
        if args.imagenet:
            from wsss.imagenet.export import repository_for_imagenet
            from wsss.imagenet.table import DEFAULT_TABLE

            table = args.imagenet_table or DEFAULT_TABLE
            repository_for_imagenet(args.repository, table, **options)
        else:
            export_run(args.run_dir, args.repository, **options)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (
        CheckpointError,
        FileNotFoundError,
        NotADirectoryError,
        tc.ConfigError,
        ValueError,  # a bad --imagenet-table (TableError) or repository (RepositoryError)
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
