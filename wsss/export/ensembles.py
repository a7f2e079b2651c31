"""Per-method Triton ensembles over the exported networks: ``<method>_cam``, ``<method>_segment``.

The ONNX exporter writes ``<method>_cam_net`` and ``<method>_deeplab`` (model + config) into a
model repository that already holds the shared Python-backend models (``decode``,
``preprocess``, ``densecrf``; checked in under ``serving/model_repository``). This module adds,
for every method whose networks are there:

``<method>_cam_post``  python   SIZE, scores, CAMs -> SCORES, CAMS at the image size, CLASS_NAMES
``<method>_cam``       ensemble IMAGE_BYTES -> decode -> preprocess -> cam_net -> cam_post
``<method>_segment``   ensemble IMAGE_BYTES -> decode -> preprocess -> deeplab -> densecrf
                       (a source without DeepLab, ``imagenet``, has ``<method>_cam_seg`` there:
                       PROBS read off its CAMs, :class:`wsss.export.wrappers.CamSegExport`)

Endpoint contract (what ``client/segment.py`` relies on):

- ``<method>_segment``: IMAGE_BYTES uint8 [n] -> LABELS uint8 [H, W] (original size) and, with
  request parameter ``probabilities=true``, PROBABILITIES float32 [K, h, w]. Request parameter
  ``crf=false`` skips the dense CRF. Config parameter ``class_names``: JSON list of the K names.
- ``<method>_cam``: IMAGE_BYTES -> SCORES float32 [C], CAMS float32 [C, H, W], CLASS_NAMES
  bytes [C] (foreground classes).

Tensor names of the networks are read from their configs (the scores output is the one with
one dimension per image, the CAMs/probabilities the one with three), class names from the ONNX
metadata (or the network config's ``class_names`` parameter). Run ``python -m
wsss.export.ensembles REPOSITORY`` after an export; ``serving/serve.py`` also does it at start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from wsss.constants import BACKGROUND

SHARED_MODELS = ("decode", "preprocess", "densecrf")
CAM_NET, DEEPLAB, CAM_SEG = "_cam_net", "_deeplab", "_cam_seg"
SEG_NETWORKS = (DEEPLAB, CAM_SEG)  # the segmentation network of <method>_segment, by preference
HEADER = "# Written by wsss.export.ensembles from the exported networks' configs; do not edit.\n"
MODEL_PY = '''"""Triton Python-backend model; the code is in :mod:`wsss.serving.models.cam_post`."""

from wsss.serving.models.cam_post import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


class RepositoryError(ValueError):
    """The repository lacks something an ensemble needs; the message names it."""


@dataclass(frozen=True)
class NetworkIO:
    """Tensor names of an exported network: one image input, outputs by role."""

    input: str
    maps: str  # CAMs [C, h, w] or probabilities [K, h, w] per image
    scores: str | None  # class scores [C] per image (CAM network only)
    channels: int  # C or K (-1 when the config leaves it variable)


def read_config(path: Path) -> mc.ModelConfig:
    """A ``config.pbtxt`` parsed into Triton's ModelConfig message."""
    if not path.is_file():
        raise RepositoryError(f"{path} is missing")
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _per_image_rank(config: mc.ModelConfig, dims: list[int]) -> int:
    return len(dims) if config.max_batch_size > 0 else len(dims) - 1


def network_io(config: mc.ModelConfig) -> NetworkIO:
    """Input and output roles of a network config (see the module docstring)."""
    if len(config.input) != 1:
        raise RepositoryError(f"{config.name}: expected one image input, got {len(config.input)}")
    maps = scores = None
    channels = -1
    for output in config.output:
        rank = _per_image_rank(config, list(output.dims))
        if rank == 3:
            maps, channels = output.name, list(output.dims)[-3]
        elif rank == 1:
            scores = output.name
    if maps is None:
        raise RepositoryError(f"{config.name}: no [N, H, W] map output among {config.output}")
    return NetworkIO(input=config.input[0].name, maps=maps, scores=scores, channels=channels)


def class_names(model_dir: Path, config: mc.ModelConfig) -> list[str]:
    """Class names of an exported network: config parameter, else ONNX metadata."""
    if "class_names" in config.parameters:
        return list(json.loads(config.parameters["class_names"].string_value))
    for onnx_path in sorted(model_dir.glob("[0-9]*/model.onnx")):
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        for prop in model.metadata_props:
            if prop.key == "class_names":
                value = prop.value.strip()
                return list(json.loads(value)) if value.startswith("[") else value.split(",")
    raise RepositoryError(f"{model_dir.name}: no class_names in its config or ONNX metadata")


def _tensor(name: str, dtype: str, dims: list[int]) -> dict:
    return {"name": name, "data_type": dtype, "dims": dims}


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    return mc.ModelEnsembling.Step(
        model_name=model, model_version=-1, input_map=inputs, output_map=outputs
    )


def _ensemble(
    name: str, outputs: list[dict], steps: list, parameters: dict[str, str]
) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=name,
        platform="ensemble",
        max_batch_size=0,
        input=[mc.ModelInput(**_tensor("IMAGE_BYTES", "TYPE_UINT8", [-1]))],
        output=[mc.ModelOutput(**o) for o in outputs],
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def _front(size: bool) -> list:
    """decode -> preprocess, shared by both ensembles (tensors image, [size,] network_input)."""
    decoded = {"IMAGE": "image", "SIZE": "size"} if size else {"IMAGE": "image"}
    return [
        _step("decode", {"IMAGE_BYTES": "IMAGE_BYTES"}, decoded),
        _step("preprocess", {"IMAGE": "image"}, {"INPUT": "network_input"}),
    ]


def cam_models(method: str, io: NetworkIO, names: list[str]) -> dict[str, mc.ModelConfig]:
    """Configs of ``<method>_cam_post`` and ``<method>_cam``."""
    if io.scores is None:
        raise RepositoryError(f"{method}{CAM_NET}: no class-score output")
    post = mc.ModelConfig(
        name=f"{method}_cam_post",
        backend="python",
        max_batch_size=0,
        input=[
            mc.ModelInput(**_tensor("SIZE", "TYPE_INT32", [2])),
            mc.ModelInput(**_tensor("SCORES", "TYPE_FP32", [1, -1])),
            mc.ModelInput(**_tensor("CAMS", "TYPE_FP32", [1, -1, -1, -1])),
        ],
        output=[
            mc.ModelOutput(**_tensor("SCORES", "TYPE_FP32", [-1])),
            mc.ModelOutput(**_tensor("CAMS", "TYPE_FP32", [-1, -1, -1])),
            mc.ModelOutput(**_tensor("CLASS_NAMES", "TYPE_STRING", [-1])),
        ],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    post.parameters["class_names"].string_value = json.dumps(names)
    steps = [
        *_front(size=True),
        _step(
            f"{method}{CAM_NET}",
            {io.input: "network_input"},
            {io.scores: "network_scores", io.maps: "network_cams"},
        ),
        _step(
            post.name,
            {"SIZE": "size", "SCORES": "network_scores", "CAMS": "network_cams"},
            {"SCORES": "SCORES", "CAMS": "CAMS", "CLASS_NAMES": "CLASS_NAMES"},
        ),
    ]
    outputs = [
        _tensor("SCORES", "TYPE_FP32", [-1]),
        _tensor("CAMS", "TYPE_FP32", [-1, -1, -1]),
        _tensor("CLASS_NAMES", "TYPE_STRING", [-1]),
    ]
    parameters = {"method": method, "class_names": json.dumps(names)}
    return {
        post.name: post,
        f"{method}_cam": _ensemble(f"{method}_cam", outputs, steps, parameters),
    }


def segment_model(
    method: str, io: NetworkIO, names: list[str], network: str | None = None
) -> mc.ModelConfig:
    """Config of ``<method>_segment`` over ``network`` (default ``<method>_deeplab``)."""
    network = network or f"{method}{DEEPLAB}"
    steps = [
        *_front(size=False),
        _step(network, {io.input: "network_input"}, {io.maps: "network_probs"}),
        _step(
            "densecrf",
            {"IMAGE": "image", "PROBS": "network_probs"},
            {"LABELS": "LABELS", "PROBABILITIES": "PROBABILITIES"},
        ),
    ]
    outputs = [
        _tensor("LABELS", "TYPE_UINT8", [-1, -1]),
        _tensor("PROBABILITIES", "TYPE_FP32", [-1, -1, -1]),
    ]
    parameters = {"method": method, "class_names": json.dumps(names)}
    return _ensemble(f"{method}_segment", outputs, steps, parameters)


def _write(repository: Path, config: mc.ModelConfig, model_py: str | None = None) -> Path:
    model_dir = repository / config.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)  # ensembles need a version folder too
    if model_py is not None:
        (model_dir / "1" / "model.py").write_text(model_py)
    path = model_dir / "config.pbtxt"
    text = HEADER + text_format.MessageToString(config)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".pbtxt.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return model_dir


def source_repository() -> Path:
    """``serving/model_repository`` of this source checkout (holds the shared models)."""
    return Path(__file__).resolve().parents[2] / "serving" / "model_repository"


def copy_shared_models(repository: str | Path, source: str | Path | None = None) -> None:
    """Copies ``decode``, ``preprocess`` and ``densecrf`` into ``repository``."""
    source = Path(source) if source is not None else source_repository()
    if Path(repository).resolve() == source.resolve():
        return  # exporting into the checked-in repository itself: they are already there
    for name in SHARED_MODELS:
        if not (source / name / "config.pbtxt").is_file():
            raise RepositoryError(f"{source / name} is not a model folder")
        shutil.copytree(
            source / name,
            Path(repository) / name,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )


def exported_methods(repository: Path) -> list[str]:
    """Methods with an exported CAM network or DeepLab in ``repository``."""
    names = set()
    for suffix in (CAM_NET, *SEG_NETWORKS):
        for path in repository.glob(f"*{suffix}/config.pbtxt"):
            names.add(path.parent.name[: -len(suffix)])
    return sorted(names)


def write_method(repository: str | Path, method: str) -> list[str]:
    """Writes the ensembles of one method; returns the model names written."""
    repository = Path(repository)
    missing = [m for m in SHARED_MODELS if not (repository / m / "config.pbtxt").is_file()]
    if missing:
        raise RepositoryError(
            f"{repository}: shared models {missing} missing (copy them from "
            "serving/model_repository)"
        )
    written = []
    cam_dir = repository / f"{method}{CAM_NET}"
    if (cam_dir / "config.pbtxt").is_file():
        config = read_config(cam_dir / "config.pbtxt")
        names = class_names(cam_dir, config)
        io = network_io(config)
        with_background = len(names) == io.channels + 1 or (
            io.channels == -1 and names[:1] == [BACKGROUND]
        )
        foreground = names[1:] if with_background else names
        for name, model in cam_models(method, io, foreground).items():
            _write(repository, model, MODEL_PY if name.endswith("_cam_post") else None)
            written.append(name)
    for suffix in SEG_NETWORKS:
        seg_dir = repository / f"{method}{suffix}"
        if (seg_dir / "config.pbtxt").is_file():
            config = read_config(seg_dir / "config.pbtxt")
            names = class_names(seg_dir, config)
            model = segment_model(method, network_io(config), names, seg_dir.name)
            _write(repository, model)
            written.append(model.name)
            break
    return written


def write_all(repository: str | Path) -> list[str]:
    """Writes the ensembles of every exported method in ``repository`` (and fits densecrf's
    instance count to this host: :func:`fit_densecrf`)."""
    fit_densecrf(repository)
    return [
        name for m in exported_methods(Path(repository)) for name in write_method(repository, m)
    ]


def configure_densecrf(
    repository: str | Path, parameters: dict[str, str], instances: int | None = None
) -> Path:
    """Sets config parameters (``impl``, ``threads``, ``iterations``, ...) of ``densecrf``.

    ``instances``: its instance count (None: unchanged). The merged parameters are checked as
    the model reads them (ValueError); the file keeps its leading comment block. Returns the
    config path.
    """
    from wsss.serving.models.densecrf import known_parameters, model_settings

    unknown = sorted(set(parameters) - set(known_parameters()))
    if unknown:
        raise RepositoryError(f"densecrf has no parameter {unknown}; known: {known_parameters()}")
    path = Path(repository) / "densecrf" / "config.pbtxt"
    config = read_config(path)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    merged = {key: value.string_value for key, value in config.parameters.items()}
    model_settings(merged)
    if instances is not None:
        if instances < 1 or len(config.instance_group) != 1:
            raise RepositoryError(f"{path}: cannot set {instances} instance(s)")
        config.instance_group[0].count = instances
    lines = path.read_text().splitlines(keepends=True)
    header = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
    tmp = path.with_suffix(".pbtxt.tmp")
    tmp.write_text("".join(header) + text_format.MessageToString(config).rstrip("\n") + "\n")
    tmp.replace(path)
    return path


def fit_densecrf(repository: str | Path, cores: int | None = None) -> int | None:
    """Writes densecrf's instance count for a host of ``cores`` (default: this one) when its
    ``instances`` parameter is ``auto`` (:func:`wsss.serving.crf_layout.choose_layout`).

    Returns the count written, None when the file was left as it was (a fixed count, already
    right, or no densecrf in ``repository``).
    """
    from wsss.serving.crf_layout import AUTO, choose_layout

    path = Path(repository) / "densecrf" / "config.pbtxt"
    if not path.is_file():
        return None
    config = read_config(path)
    if "instances" in config.parameters:
        wanted = config.parameters["instances"].string_value.strip() or AUTO
    else:
        wanted = AUTO
    if wanted != AUTO or len(config.instance_group) != 1:
        return None
    group = config.instance_group[0]
    gpu = group.kind == mc.ModelInstanceGroup.KIND_GPU
    count = choose_layout(cores, gpu_instance=gpu).instances
    if group.count == count:
        return None
    configure_densecrf(repository, {}, count)
    return count


def repository_from_run(
    run_dir: str | Path, repository: str | Path, say: Callable[[str], None] = print
) -> str:
    """A servable repository from a run: shared models, ONNX export (parity-checked), ensembles.

    Returns the method name (``<method>_cam`` / ``<method>_segment`` are its endpoints).
    """
    from wsss.export.onnx import export_run

    repository = Path(repository)
    copy_shared_models(repository)
    exported = export_run(Path(run_dir), repository, say=say)
    write_all(repository)
    return exported[0].name.removesuffix(CAM_NET).removesuffix(DEEPLAB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.export.ensembles",
        description="Write <method>_cam and <method>_segment ensembles for exported networks; "
        "optionally change the densecrf model's settings.",
        epilog="example (the PyTorch CRF, one instance on two threads: lower latency for one "
        "client): python -m wsss.export.ensembles --densecrf impl=torch --densecrf threads=2 "
        "--densecrf-instances 1",
    )
    parser.add_argument("repository", nargs="?", default="serving/model_repository")
    parser.add_argument("--method", help="only this method (default: every exported one)")
    parser.add_argument(
        "--densecrf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a densecrf config parameter (impl=pydensecrf|torch, device, threads, preset, "
        "iterations, bilateral_srgb, ...); repeatable",
    )
    parser.add_argument(
        "--densecrf-instances", type=int, metavar="N", help="densecrf instance count"
    )
    args = parser.parse_args(argv)
    settings = dict(item.partition("=")[::2] for item in args.densecrf)
    if any(not key or not value for key, value in settings.items()):
        parser.error(f"--densecrf takes KEY=VALUE, got {args.densecrf}")
    try:
        if settings or args.densecrf_instances is not None:
            path = configure_densecrf(args.repository, settings, args.densecrf_instances)
            print(f"wrote {path}")
        written = (
            write_method(args.repository, args.method)
            if args.method
            else write_all(args.repository)
        )
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {args.repository}/{name}" for name in written) or "nothing exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
