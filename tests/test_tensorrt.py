"""export/tensorrt.py: argument checks and configs everywhere; engine builds where TensorRT runs.

TensorRT cannot be installed on the CPU machines (its libraries come only from NVIDIA's servers),
so the build tests skip there with the reason; everything before the build is tested always.
"""

import importlib.util
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from wsss.export import tensorrt as trt_export
from wsss.export import triton_config as tc
from wsss.export.tensorrt import Profile, parse_shape


def _tensorrt_skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (NVIDIA container only)"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason to skip, shown
        return f"import tensorrt fails: {exc}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: TensorRT engines need one"
    return None


SKIP_REASON = _tensorrt_skip_reason()
needs_tensorrt = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def tiny_cam_model(path: Path) -> onnx.ModelProto:
    """A 3-class stand-in for an exported CAM network: IMAGES -> SCORES, CAMS (same I/O form)."""
    dims = ["batch", 3, "height", "width"]
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("ReduceMean", ["IMAGES"], ["SCORES"], axes=[2, 3], keepdims=0),
            onnx.helper.make_node("Sigmoid", ["IMAGES"], ["CAMS"]),
        ],
        "tiny",
        [onnx.helper.make_tensor_value_info("IMAGES", onnx.TensorProto.FLOAT, dims)],
        [
            onnx.helper.make_tensor_value_info("SCORES", onnx.TensorProto.FLOAT, ["batch", 3]),
            onnx.helper.make_tensor_value_info("CAMS", onnx.TensorProto.FLOAT, dims),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"network": "cam_net", "method": "cam"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return model


def test_parse_shape():
    assert parse_shape("1x3x512x512") == (1, 3, 512, 512)
    assert parse_shape("8X3X1024X768") == (8, 3, 1024, 768)
    for bad in ("1x3x512", "axbxcxd", ""):
        with pytest.raises(ValueError, match="BxCxHxW"):
            parse_shape(bad)


def test_profile_validation():
    Profile().validate()
    assert Profile().contains((2, 3, 321, 321)) and not Profile().contains((9, 3, 321, 321))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile((1, 3, 600, 600), (1, 3, 512, 512), (8, 3, 1024, 1024)).validate()
    with pytest.raises(ValueError, match="Bx3xHxW"):
        Profile((1, 1, 64, 64), (1, 1, 64, 64), (1, 1, 64, 64)).validate()
    with pytest.raises(ValueError, match="min batch must be 1"):
        Profile((2, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)).validate()


def test_tensorrt_config_matches_the_onnx_model(tmp_path):
    model = tiny_cam_model(tmp_path / "m.onnx")
    profile = Profile((1, 3, 64, 64), (2, 3, 256, 256), (4, 3, 512, 512))
    text = tc.to_pbtxt(trt_export.tensorrt_config("cam_cam_net", model, profile, count=2))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)
    ]
    assert [(i.name, list(i.dims)) for i in config.input] == [("IMAGES", [3, -1, -1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("SCORES", [3]),
        ("CAMS", [3, -1, -1]),
    ]
    assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*config.input, *config.output])
    assert config.output[0].label_filename == tc.LABELS_FILE


def run_cli(argv, capsys) -> tuple[int, str]:
    code = trt_export.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_bad_arguments_fail_with_one_line(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope"], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'nope'}: no such model directory\n"
    (tmp_path / "empty").mkdir()
    code, err = run_cli([tmp_path / "empty"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "1/model.onnx: no such file" in err and "export/onnx.py" in err
    tiny_cam_model(tmp_path / "m" / "1" / "model.onnx")
    code, err = run_cli([tmp_path / "m", "--max-shape", "8x3x1024"], capsys)
    assert code == 2 and "BxCxHxW" in err and err.count("\n") == 1
    small = ["--opt-shape", "1x3x200x200", "--max-shape", "8x3x200x200"]
    code, err = run_cli([tmp_path / "m", *small], capsys)
    assert code == 2 and "lie outside the profile" in err  # parity sizes must fit the profile


@pytest.mark.skipif(SKIP_REASON is None, reason="TensorRT is available here")
def test_missing_tensorrt_is_reported(tmp_path, capsys):
    tiny_cam_model(tmp_path / "m" / "1" / "model.onnx")
    code, err = run_cli([tmp_path / "m", "--no-timing-cache"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "tensorrt" in err or "CUDA" in err
    assert not (tmp_path / "m" / "1" / "model.plan").exists()


def test_help_explains_every_flag():
    text = trt_export.build_parser().format_help()
    for flag in (
        "--min-shape", "--opt-shape", "--max-shape", "--fp16", "--tf32", "--workspace-gib",
        "--timing-cache", "--no-timing-cache", "--version", "--instances", "--replace-config",
    ):  # fmt: skip
        assert flag in text


# ---------------------------------------------------------------------------------------------
# Real engines (NVIDIA container with a GPU)


@pytest.fixture(scope="module")
def deeplab_dir(tmp_path_factory):
    """An exported (untrained) DeepLab in a model directory, as export/onnx.py writes it."""
    from wsss.checkpoint import make_backbone
    from wsss.config import BackboneConfig
    from wsss.export.onnx import export_onnx
    from wsss.export.wrappers import SEG_OUTPUTS, SegExport
    from wsss.models.deeplab import DeepLabV2

    model_dir = tmp_path_factory.mktemp("repo") / "cam_deeplab"
    backbone = make_backbone(BackboneConfig("mobilenetv2", 16, "none", True), load_pretrained=False)
    path = model_dir / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    export_onnx(SegExport(DeepLabV2(backbone, 4)), path, SEG_OUTPUTS, {"network": "deeplab"})
    return model_dir


@needs_tensorrt
def test_fp32_engine_matches_onnxruntime(deeplab_dir, tmp_path):
    cache = tmp_path / "timing.cache"
    profile = Profile((1, 3, 128, 128), (1, 3, 321, 321), (4, 3, 512, 512))
    built = trt_export.build_model(deeplab_dir, profile, timing_cache=cache, say=lambda _: None)
    assert built.parity_passed and built.plan_path == deeplab_dir / "1" / "model.plan"
    assert built.plan_path.stat().st_size > 0 and cache.stat().st_size > 0
    assert built.config_path == deeplab_dir / "configs" / "tensorrt.pbtxt"
    config = text_format.Parse(built.config_path.read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    runner = trt_export.EngineRunner(built.plan_path.read_bytes())
    from wsss.export.parity import parity_images

    out = runner(parity_images(3, 130, 200))
    assert out["PROBS"].shape == (3, 4, 130, 200)
    # A second build reads the timing cache written by the first.
    lines = []
    trt_export.build_model(deeplab_dir, profile, timing_cache=cache, say=lines.append)
    assert any("timing cache: read" in line for line in lines)


@needs_tensorrt
def test_fp16_engine_within_fp16_bounds(deeplab_dir, tmp_path):
    import tensorrt

    if not hasattr(tensorrt.BuilderFlag, "FP16"):
        pytest.skip(f"TensorRT {tensorrt.__version__} is strongly typed: no FP16 builder flag")
    built = trt_export.build_model(
        deeplab_dir, fp16=True, timing_cache=None, replace_config=True, say=lambda _: None
    )
    assert built.parity_passed and built.config_path == deeplab_dir / "config.pbtxt"
