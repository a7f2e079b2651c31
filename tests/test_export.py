"""ONNX export of a smoke run into a Triton repository: parity, configs, metadata, bad inputs."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from wsss.cam import normalize_cams
from wsss.checkpoint import make_backbone, save_checkpoint
from wsss.cli import build_config, build_parser
from wsss.cli import main as train_main
from wsss.export import onnx as export
from wsss.export import triton_config as tc
from wsss.export.parity import (
    ParityError,
    Tolerance,
    check_parity,
    compare_output,
    parity_images,
)
from wsss.export.wrappers import CamExport, SegExport, normalize_cams_batched
from wsss.methods import METHODS, get_method
from wsss.models.deeplab import predict_probs

ROOT = Path(__file__).resolve().parent.parent
DATA_TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("export") / "cam-smoke"
    argv = ["cam", "--preset", "smoke", "--out", str(out), "--quiet"]
    assert train_main([*argv, "--stages", "cls,cam,pseudo,seg"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    """(repository, exit code, stdout) of ``export/onnx.py RUN --repository REPO``."""
    repo = tmp_path_factory.mktemp("repository")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = export.main([str(smoke_run), "--repository", str(repo)])
    return repo, code, out.getvalue()


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


# ---------------------------------------------------------------------------------------------
# The smoke run, exported through the CLI


def test_export_writes_both_models_and_passes_parity(exported):
    repo, code, text = exported
    assert code == 0, text
    for name in ("cam_cam_net", "cam_deeplab"):
        assert (repo / name / "1" / "model.onnx").is_file()
        assert (repo / name / "config.pbtxt").is_file()
        assert f"parity {name}: onnxruntime vs pytorch" in text
    assert text.count("  passed") == 2 and "FAILED" not in text
    for size in ("2x3x321x321", "2x3x257x385"):  # both sizes, one odd, checked per model
        assert text.count(size) == 2


def test_configs_match_the_onnx_models(exported, smoke_run):
    repo, _, _ = exported
    for name in ("cam_cam_net", "cam_deeplab"):
        config = parse_config(repo / name / "config.pbtxt")
        model = onnx.load(str(repo / name / "1" / "model.onnx"))
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == export.DEFAULT_MAX_BATCH
        assert [g.kind for g in config.instance_group] == [
            model_config_pb2.ModelInstanceGroup.KIND_CPU
        ]
        assert config.HasField("dynamic_batching")
        for spec, value in [
            *zip(config.input, model.graph.input, strict=True),
            *zip(config.output, model.graph.output, strict=True),
        ]:
            assert spec.name == value.name
            assert spec.data_type == DATA_TYPES[value.type.tensor_type.elem_type]
            full = onnx_dims(value)
            assert full[0] == -1  # the batch axis is dynamic and left out of dims
            assert list(spec.dims) == full[1:]
        assert list(config.input[0].dims) == [3, -1, -1]
    classes = json.loads(
        {p.key: p.value for p in onnx.load(str(repo / "cam_deeplab/1/model.onnx")).metadata_props}[
            "class_names"
        ]
    )
    cam = parse_config(repo / "cam_cam_net" / "config.pbtxt")
    assert [list(o.dims) for o in cam.output] == [[len(classes) - 1], [len(classes) - 1, -1, -1]]
    assert cam.output[0].label_filename == tc.LABELS_FILE
    labels = (repo / "cam_cam_net" / tc.LABELS_FILE).read_text().splitlines()
    assert labels == classes[1:]
    seg = parse_config(repo / "cam_deeplab" / "config.pbtxt")
    assert [list(o.dims) for o in seg.output] == [[len(classes), -1, -1]]


def test_onnx_metadata_and_checker(exported, smoke_run):
    repo, _, _ = exported
    from wsss.checkpoint import read_checkpoint

    meta = read_checkpoint(smoke_run / "classifier.pt", "classifier")
    for name, network, checkpoint in [
        ("cam_cam_net", "cam_net", "classifier.pt"),
        ("cam_deeplab", "deeplab", "deeplab.pt"),
    ]:
        model = onnx.load(str(repo / name / "1" / "model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
            export.OPSET
        ]
        props = {p.key: p.value for p in model.metadata_props}
        assert props["method"] == "cam" and props["network"] == network
        assert json.loads(props["class_names"]) == meta["class_names"]
        norm = json.loads(props["normalization"])
        assert norm == {"mean": list(meta["mean"]), "std": list(meta["std"])}
        assert props["source_checkpoint"] == str((smoke_run / checkpoint).resolve())
        assert props["code_version"] and props["training_code_version"] == meta["code_version"]
        assert props["opset"] == str(export.OPSET) and export.EXPORTER in props["exporter"]
    cam = {p.key: p.value for p in onnx.load(str(repo / "cam_cam_net/1/model.onnx")).metadata_props}
    assert json.loads(cam["cam"])["scales"] == [1.0]  # single-scale CAMs, documented


def test_exported_models_take_any_batch_and_size(exported):
    repo, _, _ = exported
    images = parity_images(3, 97, 61)
    session = export.ort_session(repo / "cam_cam_net/1/model.onnx")
    scores, cams = session.run(None, {"IMAGES": images})
    assert scores.shape == (3, 10) and cams.shape == (3, 10, 97, 61)
    top = cams.reshape(3, 10, -1).max(-1)
    assert cams.min() >= 0 and top.max() <= 1  # per-class max normalisation
    assert np.allclose(top[top > 1e-3], 1.0, atol=1e-2)
    session = export.ort_session(repo / "cam_deeplab/1/model.onnx")
    (probs,) = session.run(None, {"IMAGES": images[:1]})
    assert probs.shape == (1, 11, 97, 61)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the problem, exit code 2


def run_cli(argv, capsys) -> tuple[int, str]:
    code = export.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def test_missing_run_directory(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope", "--repository", tmp_path / "repo"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "nope" in err and "no such run directory" in err
    assert not (tmp_path / "repo").exists()


def test_run_without_deeplab(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(smoke_run / "classifier.pt", run / "classifier.pt")
    code, err = run_cli([run, "--repository", tmp_path / "repo"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "deeplab.pt: no such file" in err and "seg stage" in err
    assert not (tmp_path / "repo").exists()  # nothing written when a checkpoint is missing


def test_checkpoint_of_the_wrong_kind(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(smoke_run / "deeplab.pt", run / "classifier.pt")
    shutil.copy(smoke_run / "deeplab.pt", run / "deeplab.pt")
    code, err = run_cli([run, "--repository", tmp_path / "repo"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "classifier.pt: is a deeplab checkpoint, expected a classifier" in err
    (run / "classifier.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli([run, "--repository", tmp_path / "repo"], capsys)
    assert code == 2 and "classifier.pt: not a PyTorch checkpoint" in err


def test_script_runs_from_any_directory(tmp_path):
    """export/onnx.py must not shadow the onnx package it imports (its folder leaves sys.path)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "export" / "onnx.py"), str(tmp_path / "missing")],
        cwd=ROOT / "export",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: no such run directory"
    ]


def test_help_explains_every_flag():
    text = export.build_parser().format_help()
    for flag in ("--repository", "--max-batch-size", "--gpu", "--instances", "--version"):
        assert flag in text


def test_failed_parity_fails_the_export(smoke_run, tmp_path, capsys, monkeypatch):
    real = export.ort_runner

    def skewed(session, names):
        run = real(session, names)
        return lambda images: {k: v + 1e-3 for k, v in run(images).items()}

    monkeypatch.setattr(export, "ort_runner", skewed)
    code = export.main([str(smoke_run), "--repository", str(tmp_path / "repo")])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1
    assert "cam_cam_net: ONNX Runtime disagrees with PyTorch" in captured.err
    assert "max|diff| 1.00e-03" in captured.err and "FAILED" in captured.err
    assert not (tmp_path / "repo" / "cam_cam_net" / "1" / "model.onnx").exists()


# ---------------------------------------------------------------------------------------------
# Every method's CAM network exports (untrained weights, checkpoint -> ONNX -> parity)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_cam_network_exports(method, tmp_path, cache_dir):
    cfg = build_config(build_parser().parse_args([method, "--preset", "smoke"]))
    names = ("background", "a", "b", "c")
    backbone = make_backbone(cfg.cls.backbone, load_pretrained=False)
    model = get_method(method)(cfg.method).build_model(backbone, len(names) - 1)
    save_checkpoint(tmp_path / "classifier.pt", model, "classifier", cfg, names)
    network = export.network_named("cam_net")
    done = export.export_network(
        network, tmp_path, tmp_path / "repo", sizes=((2, 97, 161), (1, 130, 66)), say=lambda _: None
    )
    assert done.parity.passed, done.parity.lines()
    config = parse_config(done.config_path)
    assert [list(o.dims) for o in config.output] == [[3], [3, -1, -1]]


# ---------------------------------------------------------------------------------------------
# Wrappers, the adaptive-pool symbolic, parity and config pieces (small and fast)


def test_cam_wrapper_matches_per_image_normalisation():
    cams = torch.rand(2, 3, 5, 7) * torch.tensor([1.0, 0.0, 3.0]).view(1, 3, 1, 1)
    batched = normalize_cams_batched(cams)
    for i in range(2):
        torch.testing.assert_close(batched[i], normalize_cams(cams[i], "max"))


def test_wrappers_follow_the_training_code():
    cfg = build_config(build_parser().parse_args(["cam", "--preset", "smoke"]))
    backbone = make_backbone(cfg.cls.backbone, load_pretrained=False)
    model = get_method("cam")(cfg.method).build_model(backbone, 3).eval()
    x = torch.rand(1, 3, 45, 61) * 255
    with torch.inference_mode():
        scores, cams = CamExport(model)(x)
        torch.testing.assert_close(scores, model(x)["logits"])
        up = F.interpolate(model.cam(x), (45, 61), mode="bilinear", align_corners=False)
        torch.testing.assert_close(cams[0], normalize_cams(up[0], "max"))

        from wsss.models.deeplab import DeepLabV2

        deeplab = DeepLabV2(make_backbone(cfg.seg.backbone, load_pretrained=False), 4).eval()
        probs = SegExport(deeplab)(x)
        torch.testing.assert_close(probs[0], predict_probs(deeplab, x[0], (1.0,), flip=False))


def test_adaptive_pool_symbolic_is_exact_at_every_size(tmp_path):
    class Pyramid(torch.nn.Module):
        def forward(self, x):
            return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(1) for s in (1, 2, 3, 7)], 1)

    path = tmp_path / "pool.onnx"
    axes = {"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b"}}
    export.torchscript_export(Pyramid(), torch.rand(2, 3, 20, 26), path, ["x"], ["y"], axes)
    session = export.ort_session(path)
    for shape in [(1, 3, 20, 26), (2, 3, 17, 5), (1, 3, 3, 40), (1, 3, 1, 1)]:
        x = torch.rand(*shape)
        (y,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(y, Pyramid()(x).numpy(), atol=1e-6)


def test_parity_counts_reference_ties_as_agreement():
    ref = np.zeros((1, 3, 2, 2), np.float32)
    ref[0, 1, 0, 0] = 1.0  # one decided pixel; the other three are ties (all zero)
    cand = ref.copy()
    cand[0, 2, 1, 1] = 5e-5  # a tie broken differently: not a disagreement
    out = compare_output("CAMS", ref, cand)
    assert out.passed and out.argmax_agreement == 1.0 and out.raw_agreement == 0.75
    cand[0, 2, 0, 0] = 2.0  # the decided pixel flips, and the difference is too large
    out = compare_output("CAMS", ref, cand)
    assert not out.passed and out.argmax_agreement == 0.75
    logits = np.array([[20.0, -3.0]])
    scores = compare_output("SCORES", logits, logits + [[1e-3, 0]], Tolerance(rtol=1e-4))
    assert scores.passed and scores.worst == pytest.approx(1e-3 / (1e-4 + 20 * 1e-4))
    assert not compare_output("SCORES", logits, logits + [[1e-3, 0]]).passed  # absolute only


def test_check_parity_reports_shapes_and_failures():
    def ref(images):
        return {"PROBS": np.ones((images.shape[0], 2, *images.shape[2:]), np.float32) / 2}

    def bad(images):
        out = ref(images)["PROBS"].copy()
        out[:, 0] += 0.1
        return {"PROBS": out}

    report = check_parity("m", ref, ref, ["PROBS"], sizes=((1, 9, 7),))
    assert report.passed and report.results[0][0] == (1, 3, 9, 7)
    report = check_parity("m", ref, bad, ["PROBS"], sizes=((1, 9, 7),))
    assert not report.passed and "1x3x9x7 PROBS max|diff| 1.00e-01" in report.failures()
    with pytest.raises(ParityError, match="shape"):
        check_parity("m", ref, lambda x: {"PROBS": np.zeros((1, 2, 3, 3))}, ["PROBS"], ((1, 9, 7),))


def test_generator_writes_ensembles_too():
    """The config generator renders any ModelConfig, e.g. the ensembles of a later issue."""
    config = {
        "name": "cam_segment",
        "platform": "ensemble",
        "max_batch_size": 0,
        "input": [tc.tensor_spec("BYTES", "TYPE_STRING", [1])],
        "output": [tc.tensor_spec("PROBS", "TYPE_FP32", [-1, -1, -1])],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": "decode",
                    "model_version": -1,
                    "input_map": tc.map_entries({"BYTES": "BYTES"}),
                    "output_map": tc.map_entries({"IMAGE": "image"}),
                },
                {
                    "model_name": "cam_deeplab",
                    "model_version": -1,
                    "input_map": tc.map_entries({"IMAGES": "image"}),
                    "output_map": tc.map_entries({"PROBS": "PROBS"}),
                },
            ]
        },
        "parameters": tc.map_entries({"note": {"string_value": 'quotes " and \\ survive'}}),
    }
    parsed = text_format.Parse(tc.to_pbtxt(config), model_config_pb2.ModelConfig())
    steps = parsed.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["decode", "cam_deeplab"]
    assert dict(steps[1].input_map) == {"IMAGES": "image"}
    assert parsed.parameters["note"].string_value == 'quotes " and \\ survive'
    assert parsed.input[0].data_type == model_config_pb2.TYPE_STRING


def test_config_generator_refuses_unbatchable_models():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    with pytest.raises(tc.ConfigError, match="no dynamic batch"):
        tc.onnx_tensor_specs(onnx.helper.make_model(graph))
    with pytest.raises(tc.ConfigError, match="KIND_TPU"):
        tc.model_config("m", tc.ORT_PLATFORM, 1, [], [], kind="KIND_TPU")
