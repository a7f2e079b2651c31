"""``client/segment.py`` without a server: colours, files written, one-line errors, imports.

The client against a real server (HTTP and gRPC, masks equal to the in-process pipeline,
unknown method, model not ready, unreadable file) is tested in tests/test_serving.py.
"""

from __future__ import annotations

import importlib.util
import io
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.constants import voc_palette

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client" / "segment.py"


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("segment_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["segment_client"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules["segment_client"]


def closed_port() -> int:
    """A loopback port with nothing listening (picked by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_palette_is_the_voc_palette(client):
    assert client.voc_palette() == voc_palette()


def test_mask_and_overlay(client):
    labels = np.array([[0, 1], [15, 255]], np.uint8)
    mask = client.mask_image(labels)
    assert mask.mode == "P" and mask.getpalette()[:48] == voc_palette()[:48]
    np.testing.assert_array_equal(np.asarray(mask), labels)
    rgb = np.full((2, 2, 3), 100, np.uint8)
    over = np.asarray(client.overlay(rgb, labels))
    np.testing.assert_array_equal(over[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(over[0, 1], [114, 50, 50])  # half of (128, 0, 0)


def test_jet_and_heat_map(client):
    colours = client.jet(np.array([[0.0, 0.5, 1.0]]))
    np.testing.assert_array_equal(colours[0], [[0, 0, 127], [127, 255, 127], [127, 0, 0]])
    assert client.heat_map(np.zeros((3, 4, 3), np.uint8), np.ones((3, 4))).size == (4, 3)


def test_classes_found(client):
    labels = np.array([[0, 0, 0, 2]], np.uint8)
    found = client.classes_found(labels, ["background", "cat", "dog"])
    assert found == [("background", 0.75), ("dog", 0.25)]
    assert client.classes_found(np.array([[7]], np.uint8), ["background"]) == [("class 7", 1.0)]


def test_load_rgb(client):
    buffer = io.BytesIO()
    Image.fromarray(np.full((3, 5), 65535, np.uint16)).save(buffer, "PNG")
    np.testing.assert_array_equal(client.load_rgb(buffer.getvalue()), np.full((3, 5, 3), 255))
    assert client.load_rgb(b"not an image") is None


def test_save_outputs(client, tmp_path):
    labels = np.zeros((6, 8), np.uint8)
    labels[2:4, 3:6] = 2
    cams = np.random.default_rng(0).random((2, 6, 8)).astype(np.float32)
    result = client.Result(
        labels=labels,
        seconds=0.1,
        probabilities=np.zeros((3, 6, 8), np.float32),
        cams=cams,
        cam_names=["cat", "dog"],
        scores=np.array([0.1, 2.0], np.float32),
    )
    rgb = np.full((6, 8, 3), 60, np.uint8)
    written = client.save_outputs(
        Path("a/b/img.jpg"), tmp_path, rgb, result, ["background", "cat", "dog"]
    )
    names = sorted(p.name for p in written)
    assert names == [
        "img_cam_dog.png", "img_mask.png", "img_overlay.png", "img_probabilities.npy"
    ]  # fmt: skip
    assert all(p.is_file() for p in written)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_down_is_one_clear_line(protocol, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)
    port = closed_port()
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(image), "--url", f"127.0.0.1:{port}",
         "--protocol", protocol],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no Triton server at 127.0.0.1:{port}")


def test_client_needs_no_torch_and_no_wsss(tmp_path):
    """Imports the client and both tritonclient protocols in a fresh interpreter."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(CLIENT)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m\n"
        "spec.loader.exec_module(m)\n"
        f"m.main(['x.png', '--url', '127.0.0.1:{closed_port()}'])\n"
        "import tritonclient.grpc, tritonclient.http\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'wsss')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_help_and_bad_arguments():
    done = subprocess.run(
        [sys.executable, str(CLIENT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--no-crf" in done.stdout and "--cam" in done.stdout
    done = subprocess.run(
        [sys.executable, str(CLIENT), "x.jpg", "--protocol", "ftp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr
