"""``client/segment.py`` without a server: colours, files written, one-line errors, imports.

Wrong ports are played by throwaway loopback servers: one that answers like Triton's metrics
port (any GET 200, Prometheus text at /metrics, other methods 405), a plain HTTP/1 server (what
gRPC meets on Triton's HTTP port) and one that opens with an HTTP/2 SETTINGS frame (what HTTP
meets on the gRPC port).

The client against a real server (HTTP and gRPC, masks equal to the in-process pipeline,
unknown method, model not ready, unreadable file) is tested in tests/test_serving.py.
"""

from __future__ import annotations

import http.server
import importlib.util
import io
import socket
import socketserver
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.constants import voc_palette
from wsss.serving.imaging import FORMATS

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


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=120
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    """The only line on stderr of a client that failed with status 2 (no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    """Triton's metrics port: every GET is 200 (the metrics at /metrics), anything else 405."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b"# HELP nv_gpu_utilization GPU utilization\n" if self.path == "/metrics" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.send_error(405, "Method Not Allowed")

    def log_message(self, *args):
        pass


class NotFoundHandler(MetricsHandler):
    """An HTTP/1 server that knows no path (what gRPC finds on Triton's HTTP port)."""

    def do_GET(self):  # noqa: N802
        self.send_error(404, "Not Found")

    do_POST = do_GET


class Http2Handler(socketserver.BaseRequestHandler):
    """Answers whatever comes with an empty HTTP/2 SETTINGS frame, then closes (a gRPC port)."""

    def handle(self):
        self.request.settimeout(5)
        try:
            self.request.recv(65536)
            self.request.sendall(bytes.fromhex("000000040000000000"))
            self.request.recv(65536)  # wait for the peer to give up
        except OSError:
            pass


class CountingHandler(socketserver.BaseRequestHandler):
    connections = 0

    def handle(self):
        type(self).connections += 1


@contextmanager
def stub_server(handler):
    """A threaded server on a free loopback port; yields the port; stopped on exit."""
    server_class = (
        http.server.ThreadingHTTPServer
        if issubclass(handler, http.server.BaseHTTPRequestHandler)
        else socketserver.ThreadingTCPServer
    )
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    return path


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
def test_server_down_is_one_clear_line(protocol, image):
    port = closed_port()
    line = one_line(run_client(str(image), "--url", f"127.0.0.1:{port}", "--protocol", protocol))
    assert line.startswith(f"error: no Triton server at 127.0.0.1:{port} ({protocol})")
    assert "nothing listens there" in line and "`make serve`" in line


@pytest.mark.parametrize(
    ("protocol", "url", "fixed"),
    [
        ("http", "http://localhost:8000", "localhost:8000"),
        ("grpc", "grpc://localhost:8001", "localhost:8001"),
        ("grpc", "http://127.0.0.1:8001/v2", "127.0.0.1:8001"),
    ],
)
def test_url_with_a_scheme_is_refused_with_the_fix(protocol, url, fixed, image):
    line = one_line(run_client(str(image), "--url", url, "--protocol", protocol))
    assert "--url takes HOST:PORT without a scheme" in line and line.endswith(f"--url {fixed}")


def test_check_url(client):
    assert client.check_url(" localhost:8000 ") == "localhost:8000"
    assert client.check_url("[::1]:8001") == "[::1]:8001"
    for bad, message in [
        ("localhost", "needs HOST:PORT"),
        ("localhost:http", "needs HOST:PORT"),
        (":8000", "needs HOST:PORT"),
        ("localhost:8000/v2", "without a path: use --url localhost:8000"),
        ("https://h:8000", "without a scheme (https://): use --url h:8000"),
    ]:
        with pytest.raises(
            client.ClientError, match=message.replace("(", r"\(").replace(")", r"\)")
        ):
            client.check_url(bad)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_metrics_port_is_named(protocol, image):
    with stub_server(MetricsHandler) as port:
        line = one_line(
            run_client(str(image), "--url", f"127.0.0.1:{port}", "--protocol", protocol)
        )
    assert line == (
        f"error: 127.0.0.1:{port} is Triton's metrics port (default 8002), not an inference "
        "endpoint: use --url 127.0.0.1:8000 (HTTP) or --url 127.0.0.1:8001 --protocol grpc"
    )


def test_http_on_the_grpc_port_says_use_grpc(image):
    with stub_server(Http2Handler) as port:
        line = one_line(run_client(str(image), "--url", f"127.0.0.1:{port}"))
    assert line == (
        f"error: 127.0.0.1:{port} speaks gRPC, not HTTP: add --protocol grpc "
        "(Triton's HTTP port is 8000)"
    )


def test_grpc_on_the_http_port_says_use_http(image):
    with stub_server(NotFoundHandler) as port:
        line = one_line(run_client(str(image), "--url", f"127.0.0.1:{port}", "--protocol", "grpc"))
    assert line == (
        f"error: 127.0.0.1:{port} speaks HTTP, not gRPC: leave out --protocol grpc "
        "(Triton's gRPC port is 8001)"
    )


def test_probe(client):
    assert client.probe("127.0.0.1", closed_port()) == "nothing"
    for handler, kind in [(MetricsHandler, "metrics"), (NotFoundHandler, "http"),
                          (Http2Handler, "grpc")]:  # fmt: skip
        with stub_server(handler) as port:
            assert client.probe("127.0.0.1", port) == kind


def test_missing_image_is_reported_before_any_server_contact(tmp_path):
    CountingHandler.connections = 0
    missing = tmp_path / "missing.jpg"
    with stub_server(CountingHandler) as port:
        line = one_line(run_client(str(missing), "--url", f"127.0.0.1:{port}"))
    assert line == f"error: cannot read {missing}: No such file or directory"
    assert CountingHandler.connections == 0
    line = one_line(run_client(str(tmp_path), "--url", f"127.0.0.1:{closed_port()}"))
    assert line == f"error: cannot read {tmp_path}: not a file"


def test_client_needs_no_torch_and_no_wsss(tmp_path):
    """Imports the client and both tritonclient protocols in a fresh interpreter."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(CLIENT)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m\n"
        "spec.loader.exec_module(m)\n"
        "from PIL import Image; Image.new('RGB', (4, 4)).save('x.png')\n"
        f"assert m.main(['x.png', '--url', '127.0.0.1:{closed_port()}']) == 2\n"
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
    listed = " ".join(done.stdout.split()).upper()
    assert all(fmt in listed for fmt in FORMATS), (FORMATS, done.stdout)  # the server's decode
    done = subprocess.run(
        [sys.executable, str(CLIENT), "x.jpg", "--protocol", "ftp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_percent_never_shows_a_present_class_as_zero(client):
    assert client.percent(0.0) == "0%"
    assert client.percent(1 / (128 * 128)) == "<0.1%"
    assert client.percent(0.0004) == "<0.1%"
    assert client.percent(0.001) == "0.1%"
    assert client.percent(0.25) == "25.0%"
    assert client.percent(1 - 1 / (128 * 128)) == ">99.9%"
    assert client.percent(1.0) == "100.0%"


def bench_labels() -> np.ndarray:
    """A 96 x 128 label map: a dog block (class 12), one person pixel (15), background."""
    labels = np.zeros((96, 128), np.uint8)
    labels[10:40, 20:60] = 12
    labels[80, 100] = 15
    return labels


def test_legend_entries(client):
    names = ["background"] + [f"c{i}" for i in range(1, 12)] + ["dog", "c13", "c14", "person"]
    entries = client.legend_entries(bench_labels(), names)
    palette = np.array(voc_palette()).reshape(256, 3)
    assert entries == [
        ("dog 9.8%", tuple(palette[12].tolist())),
        ("person <0.1%", tuple(palette[15].tolist())),
    ]
    assert client.legend_entries(np.zeros((4, 4), np.uint8), names) == []
    ignore = np.array([[0, 255]], np.uint8)
    assert client.legend_entries(ignore, names) == [("ignore 50.0%", (224, 224, 192))]


def colour_pixels(image: np.ndarray, colour) -> int:
    return int(np.all(image == np.array(colour), axis=-1).sum())


def test_overlay_is_enlarged_and_has_a_legend(client):
    labels = bench_labels()
    rgb = np.full((96, 128, 3), 100, np.uint8)
    names = ["background"] + [f"c{i}" for i in range(1, 12)] + ["dog", "c13", "c14", "person"]
    out = np.asarray(client.overlay_with_legend(rgb, labels, names))
    factor = 4  # 96 px short side -> 384
    height, width = 96 * factor, 128 * factor
    assert out.shape[1] == width and out.shape[0] > height + 10
    picture, strip = out[:height], out[height:]
    # nearest neighbour: every label pixel is a factor x factor block of one colour
    big_rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    big_labels = labels.repeat(factor, axis=0).repeat(factor, axis=1)
    np.testing.assert_array_equal(picture, np.asarray(client.overlay(big_rgb, big_labels)))
    person = (np.array([100, 100, 100]) + np.array(voc_palette()[45:48])) // 2
    block = picture[80 * factor : 81 * factor, 100 * factor : 101 * factor]
    np.testing.assert_array_equal(block, np.broadcast_to(person, (factor, factor, 3)))
    palette = np.array(voc_palette()).reshape(256, 3)
    # a swatch of each class present, in its exact colour; none of a class absent
    assert colour_pixels(strip, palette[12]) >= 100 and colour_pixels(strip, palette[15]) >= 100
    assert colour_pixels(strip, palette[1]) == 0 and colour_pixels(picture, palette[12]) == 0
    dark = np.all(strip < 60, axis=-1).sum()
    assert dark > 100  # the names are written
    # large images keep their size
    large = np.zeros((400, 500), np.uint8)
    big = np.asarray(client.overlay_with_legend(np.stack([large] * 3, axis=-1), large, names))
    assert big.shape[1] == 500 and big.shape[0] > 400


class FakeSegmenter:
    """Stands in for the server: a fixed label map with one class on a single pixel."""

    def __init__(self, url, protocol, method, timeout):
        self.url, self.segment_model, self.class_names = url, "m_segment", ["background", "cat"]

    def segment(self, data, crf=True, probabilities=False):
        labels = np.zeros((128, 128), np.uint8)
        labels[5, 7] = 1
        return client_module().Result(labels=labels, seconds=0.01)

    def close(self):
        pass


def client_module():
    return sys.modules["segment_client"]


def test_printed_areas_and_written_overlay(client, tmp_path, monkeypatch, capsys):
    path = tmp_path / "bench.png"
    Image.new("RGB", (128, 128), (90, 90, 90)).save(path)
    monkeypatch.setattr(client, "Segmenter", FakeSegmenter)
    assert client.main([str(path), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.strip()
    assert "[m_segment] background >99.9%, cat <0.1% (segment 10 ms)" in line
    overlay = Image.open(tmp_path / "out" / "bench_overlay.png")
    assert overlay.width == 384 and overlay.height > 384  # 3 x 128 px, legend below
    legend = np.asarray(overlay.convert("RGB"))[384:]
    assert colour_pixels(legend, voc_palette()[3:6]) > 0  # cat's swatch
    assert Image.open(tmp_path / "out" / "bench_mask.png").size == (128, 128)
