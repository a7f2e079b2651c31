"""Segment photos with a Triton server running the WSSS model repository.

    python client/segment.py IMAGE [IMAGE ...] [--url HOST:PORT] [--protocol http|grpc]
                             [--method NAME] [--out DIR] [--no-crf] [--cam] [--probs]

For each image it writes ``<stem>_mask.png`` (label map, PASCAL VOC palette, at the image size),
``<stem>_overlay.png`` (colour mask over the photo with a legend of the classes found, enlarged
to at least 384 px on the short side) and, with ``--cam``, one ``<stem>_cam_<class>.png`` heat
map per class found; it prints the classes found and the request times. Self-contained: needs
tritonclient, numpy and Pillow only (no torch, no wsss).

Problems are one line on stderr: missing image files (checked before the server is contacted),
a ``--url`` with a scheme or without a port, no server listening, Triton's metrics port, or the
HTTP port asked over gRPC and the other way round (the port is probed to tell which).

Endpoints used (see wsss/export/ensembles.py): ``<method>_segment`` (input IMAGE_BYTES, the
encoded file; outputs LABELS, PROBABILITIES; request parameters ``crf`` and ``probabilities``)
and ``<method>_cam`` (outputs SCORES, CAMS, CLASS_NAMES).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
METRICS_PORT = 8002
# The image formats the server's decode model accepts (wsss.serving.imaging.FORMATS).
FORMATS = ("JPEG", "PNG", "WebP", "BMP", "GIF")
OVERLAY_MIN_SIDE = 384  # overlays of smaller images are enlarged (whole factors, nearest labels)


class ClientError(RuntimeError):
    """A problem reported to the user as one line (no traceback)."""


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat [r, g, b, ...] list (same as wsss.constants)."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def mask_image(labels: np.ndarray) -> Image.Image:
    """uint8 label map -> palette PNG image (VOC colours, 255 = ignore in cream)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    return image


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The photo with the label colours blended in (background left as is)."""
    colours = np.array(voc_palette(), dtype=np.float32).reshape(256, 3)[labels]
    blend = rgb.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((labels > 0)[..., None], blend, rgb.astype(np.float32))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def percent(fraction: float) -> str:
    """A fraction of the pixels as a percentage that never rounds a present class to 0.0%."""
    if fraction <= 0:
        return "0%"
    if fraction < 0.001:
        return "<0.1%"
    if 0.999 < fraction < 1:
        return ">99.9%"
    return f"{fraction:.1%}"


def enlarge(
    rgb: np.ndarray, labels: np.ndarray, min_side: int = OVERLAY_MIN_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Photo and label map scaled by the whole factor that brings the short side to min_side.

    The labels are repeated (nearest neighbour: one block per predicted pixel), the photo is
    resized bicubically to the same size. Images already that large are returned as they are.
    """
    factor = max(1, math.ceil(min_side / max(1, min(labels.shape))))
    if factor == 1:
        return rgb, labels
    big = labels.repeat(factor, axis=0).repeat(factor, axis=1)
    size = (big.shape[1], big.shape[0])
    photo = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    return photo, big


def legend_entries(labels: np.ndarray, names: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """(``"name 12.3%"``, RGB colour) for each coloured class in the label map, largest first.

    Background (0) is left out: the overlay leaves it uncoloured.
    """
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    values, counts = np.unique(labels, return_counts=True)
    entries = []
    for value, count in sorted(
        zip(values.tolist(), counts.tolist(), strict=True), key=lambda v: -v[1]
    ):
        if value == 0:
            continue
        name = (
            names[value] if value < len(names) else ("ignore" if value == 255 else f"class {value}")
        )
        entries.append((f"{name} {percent(count / labels.size)}", tuple(palette[value].tolist())))
    return entries


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def legend(width: int, entries: list[tuple[str, tuple[int, ...]]]) -> Image.Image:
    """A white strip ``width`` wide: a colour swatch and the label of each entry, wrapped."""
    font = _font(max(14, width // 48))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top, bottom = font.getbbox("Ag")[1::2]
    text_h = bottom - top
    swatch, pad, gap = max(12, text_h), 8, 18
    if not entries:
        entries = [("background only: no class found", None)]
    x, y, placed = pad, pad, []
    for text, colour in entries:
        item = (swatch + 6 if colour else 0) + math.ceil(measure.textlength(text, font=font))
        if x > pad and x + item > width - pad:
            x, y = pad, y + swatch + pad
        placed.append((x, y, text, colour))
        x += item + gap
    strip = Image.new("RGB", (width, y + swatch + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, y, text, colour in placed:
        if colour:
            draw.rectangle(
                (x, y, x + swatch - 1, y + swatch - 1), fill=colour, outline=(64, 64, 64)
            )
            x += swatch + 6
        draw.text((x, y + (swatch - text_h) // 2 - top), text, fill=(0, 0, 0), font=font)
    return strip


def overlay_with_legend(
    rgb: np.ndarray, labels: np.ndarray, names: list[str], min_side: int = OVERLAY_MIN_SIDE
) -> Image.Image:
    """The overlay, enlarged to ``min_side`` for small images, above a legend of its classes."""
    photo, big = enlarge(rgb, labels, min_side)
    blended = overlay(photo, big)
    strip = legend(blended.width, legend_entries(labels, names))
    out = Image.new("RGB", (blended.width, blended.height + strip.height), (255, 255, 255))
    out.paste(blended, (0, 0))
    out.paste(strip, (0, blended.height))
    return out


def jet(values: np.ndarray) -> np.ndarray:
    """float [H, W] in 0..1 -> uint8 RGB [H, W, 3], the 'jet' colour map."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def heat_map(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """A CAM (values 0..1) as a jet heat map over the photo."""
    blend = rgb.astype(np.float32) * (1 - alpha) + jet(cam).astype(np.float32) * alpha
    return Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8))


def load_rgb(data: bytes) -> np.ndarray | None:
    """The photo as the server sees it (EXIF-upright RGB), or None if Pillow cannot read it."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            if image.mode.startswith("I;16"):
                grey = (np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)).round()
                return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - the overlay is optional; the server decides validity
        return None


@dataclass
class Result:
    """What the server returned for one image."""

    labels: np.ndarray
    seconds: float
    probabilities: np.ndarray | None = None
    cams: np.ndarray | None = None
    cam_names: list[str] | None = None
    scores: np.ndarray | None = None
    cam_seconds: float = 0.0


class Segmenter:
    """A connection to the server and the ``<method>_segment`` / ``<method>_cam`` endpoints."""

    def __init__(self, url: str, protocol: str, method: str | None, timeout: float = 300.0):
        if protocol == "grpc":
            import tritonclient.grpc as tc
        elif protocol == "http":
            import tritonclient.http as tc
        else:
            raise ClientError(f"unknown protocol {protocol!r}; use http or grpc")
        from tritonclient.utils import InferenceServerException

        url = check_url(url)
        self.tc, self.protocol, self.url, self.timeout = tc, protocol, url, timeout
        self.error_types = (InferenceServerException, OSError)
        try:
            if protocol == "http":
                self.client = tc.InferenceServerClient(
                    url, connection_timeout=timeout, network_timeout=timeout
                )
            else:
                self.client = tc.InferenceServerClient(url)
            live = self.client.is_server_live()
            if live:  # Triton's metrics port answers any GET, but not this POST
                self.client.get_model_repository_index(**self._json())
        except Exception as exc:  # noqa: BLE001 - any failure here means "no server"
            fallback = f"no Triton server at {url} ({protocol}): {_short(exc)}"
            raise connection_error(url, protocol, _short(exc), fallback) from None
        if not live:
            fallback = f"Triton server at {url} ({protocol}) is not live"
            raise connection_error(url, protocol, "not live", fallback)
        self.method = method or self._only_method()
        self.segment_model = f"{self.method}_segment"
        self.cam_model = f"{self.method}_cam"
        self._check_ready(self.segment_model)
        self.class_names = self._class_names(self.segment_model)

    def close(self) -> None:
        self.client.close()

    def _call(self, function, *args, **kwargs):
        """A tritonclient call whose server or network errors become one-line ClientErrors."""
        try:
            return function(*args, **kwargs)
        except self.error_types as exc:
            raise ClientError(f"server at {self.url}: {_short(exc)}") from None

    def _index(self) -> dict[str, str]:
        index = self._call(self.client.get_model_repository_index, **self._json())
        models = index.get("models", []) if isinstance(index, dict) else index
        return {m["name"]: m.get("state", "") for m in models}

    def _methods(self) -> list[str]:
        return sorted(n[: -len("_segment")] for n in self._index() if n.endswith("_segment"))

    def _only_method(self) -> str:
        methods = self._methods()
        if len(methods) == 1:
            return methods[0]
        if not methods:
            raise ClientError(f"the server at {self.url} serves no <method>_segment model")
        raise ClientError(f"the server serves several methods ({', '.join(methods)}): --method")

    def _check_ready(self, model: str) -> None:
        index = self._index()
        if model not in index:
            raise ClientError(
                f"unknown method {self.method!r}: the server at {self.url} serves "
                f"{', '.join(self._methods()) or 'no methods'}"
            )
        if not self._call(self.client.is_model_ready, model):
            raise ClientError(f"model {model} is not ready on the server (state: {index[model]})")

    def _class_names(self, model: str) -> list[str]:
        config = self._call(self.client.get_model_config, model, **self._json())
        config = config.get("config", config)
        value = config.get("parameters", {}).get("class_names", {}).get("string_value", "[]")
        return list(json.loads(value))

    def _json(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def _infer(self, model: str, data: bytes, outputs: list[str], params: dict):
        tensor = self.tc.InferInput("IMAGE_BYTES", [len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8))
        requested = [self.tc.InferRequestedOutput(name) for name in outputs]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        start = time.perf_counter()
        try:
            response = self.client.infer(
                model, [tensor], outputs=requested, parameters=params or None, **kwargs
            )
        except self.error_types as exc:
            raise ClientError(_short(exc)) from None
        return response, time.perf_counter() - start

    def segment(self, data: bytes, crf: bool = True, probabilities: bool = False) -> Result:
        """LABELS (and PROBABILITIES) for one encoded image."""
        outputs = ["LABELS"] + (["PROBABILITIES"] if probabilities else [])
        params = {"crf": crf, "probabilities": probabilities}
        response, seconds = self._infer(self.segment_model, data, outputs, params)
        probs = response.as_numpy("PROBABILITIES") if probabilities else None
        return Result(labels=response.as_numpy("LABELS"), seconds=seconds, probabilities=probs)

    def cam(self, data: bytes, result: Result) -> Result:
        """Adds SCORES, CAMS and CLASS_NAMES of ``<method>_cam`` to ``result``."""
        self._check_ready(self.cam_model)
        response, seconds = self._infer(self.cam_model, data, ["SCORES", "CAMS", "CLASS_NAMES"], {})
        result.scores = response.as_numpy("SCORES")
        result.cams = response.as_numpy("CAMS")
        result.cam_names = [n.decode() for n in response.as_numpy("CLASS_NAMES").reshape(-1)]
        result.cam_seconds = seconds
        return result


def check_url(url: str) -> str:
    """``--url`` as HOST:PORT; a scheme, a path or a missing port is refused with the fix."""
    text = url.strip()
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    rest = text[scheme.end() :] if scheme else text
    host_port = rest.split("/", 1)[0]
    if scheme or "/" in rest:
        what = f"a scheme ({scheme.group(1)}://)" if scheme else "a path"
        raise ClientError(
            f"--url takes HOST:PORT without {what}: use --url {host_port or 'localhost:8000'}"
        )
    host, port = split_host_port(text)
    if not host or port is None:
        raise ClientError(
            f"--url {url!r} needs HOST:PORT, e.g. localhost:{DEFAULT_PORTS['http']} (HTTP) or "
            f"localhost:{DEFAULT_PORTS['grpc']} (gRPC)"
        )
    return text


def split_host_port(url: str) -> tuple[str, int | None]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); port None when absent or not a port number."""
    if url.startswith("["):
        host, _, rest = url[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif url.count(":") == 1:
        host, _, port = url.partition(":")
    else:  # no port, or a bare IPv6 address
        host, port = url, ""
    if port.isdigit() and 0 < int(port) < 65536:
        return host, int(port)
    return host, None


def probe(host: str, port: int, timeout: float = 3.0) -> str:
    """What answers at host:port, asked with a plain HTTP/1.1 ``GET /metrics``.

    'nothing' (connection refused or unreachable), 'unresolved' (unknown host), 'metrics'
    (Prometheus text: Triton's metrics port), 'http' (another HTTP/1 answer), 'grpc' (HTTP/2
    frames: a gRPC port) or 'unknown'.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return "unresolved"
    except OSError:
        return "nothing"
    data = b""
    with sock:
        try:
            request = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode())
            while len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if not data.startswith(b"HTTP/"[: len(data)]) and len(data) >= 9:
                    break  # binary frames: enough to tell
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and (b"# HELP" in body or (length and len(body) >= int(length.group(1)))):
                    break
        except OSError:  # timeout or reset: judge what came
            pass
    if data.startswith(b"HTTP/"):
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") else b""
        if status == b"200" and (b"# HELP" in body or b"# TYPE" in body):
            return "metrics"
        return "http"
    if len(data) >= 9 and data[3] in (0x04, 0x07):  # HTTP/2 SETTINGS or GOAWAY frame
        return "grpc"
    return "unknown"


def connection_error(url: str, protocol: str, detail: str, fallback: str) -> ClientError:
    """The one-line reason why ``url`` is no Triton endpoint for ``protocol``, from a probe."""
    host, port = split_host_port(url)
    shown = f"[{host}]" if ":" in host else host
    http, grpc = DEFAULT_PORTS["http"], DEFAULT_PORTS["grpc"]
    kind = probe(host, port) if port else "unknown"
    if kind == "nothing":
        return ClientError(
            f"no Triton server at {url} ({protocol}): nothing listens there; start one with "
            f"`make serve` (HTTP on :{http}, gRPC on :{grpc}) or pass --url HOST:PORT"
        )
    if kind == "unresolved":
        return ClientError(f"no Triton server at {url} ({protocol}): unknown host {host!r}")
    if kind == "metrics" or (port == METRICS_PORT and "405" in detail):
        return ClientError(
            f"{url} is Triton's metrics port (default {METRICS_PORT}), not an inference "
            f"endpoint: use --url {shown}:{http} (HTTP) or --url {shown}:{grpc} --protocol grpc"
        )
    if protocol == "http" and (kind == "grpc" or "Expected HTTP/" in detail):
        return ClientError(
            f"{url} speaks gRPC, not HTTP: add --protocol grpc (Triton's HTTP port is {http})"
        )
    if protocol == "grpc" and kind == "http":
        return ClientError(
            f"{url} speaks HTTP, not gRPC: leave out --protocol grpc (Triton's gRPC port is {grpc})"
        )
    return ClientError(fallback)


def _short(exc: BaseException) -> str:
    """An exception as one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def classes_found(labels: np.ndarray, names: list[str]) -> list[tuple[str, float]]:
    """(class name, fraction of pixels) for every label in the map, largest first."""
    values, counts = np.unique(labels, return_counts=True)
    found = []
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        name = names[value] if value < len(names) else f"class {value}"
        found.append((name, count / labels.size))
    return sorted(found, key=lambda item: -item[1])


def save_outputs(
    path: Path, out: Path, rgb: np.ndarray | None, result: Result, names: list[str]
) -> list[Path]:
    """Writes mask, overlay, probabilities (.npy) and CAM heat maps; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{path.stem}_mask.png"]
    mask_image(result.labels).save(written[-1])
    if rgb is not None and rgb.shape[:2] == result.labels.shape:
        written.append(out / f"{path.stem}_overlay.png")
        overlay_with_legend(rgb, result.labels, names).save(written[-1])
    if result.probabilities is not None:
        written.append(out / f"{path.stem}_probabilities.npy")
        np.save(written[-1], result.probabilities)
    if result.cams is not None and rgb is not None and rgb.shape[:2] == result.cams.shape[1:]:
        present = {name for name, _ in classes_found(result.labels, names)}
        chosen = [i for i, n in enumerate(result.cam_names or []) if n in present]
        if not chosen and result.scores is not None and len(result.scores):
            chosen = [int(np.argmax(result.scores))]
        for index in chosen:
            name = result.cam_names[index]
            written.append(out / f"{path.stem}_cam_{name}.png")
            heat_map(rgb, result.cams[index]).save(written[-1])
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client/segment.py",
        description="Send photos to the WSSS Triton endpoints; write masks, overlays, CAMs.",
    )
    parser.add_argument(
        "images", nargs="+", type=Path, help=f"image files ({', '.join(FORMATS)}; GIF: 1st frame)"
    )
    parser.add_argument("--url", help="server HOST:PORT (default localhost:8000 / :8001 for gRPC)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--method", help="WSSS method served (default: the only one served)")
    parser.add_argument("--out", type=Path, default=Path("segment_out"), help="output folder")
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF")
    parser.add_argument("--cam", action="store_true", help="also write CAM heat maps")
    parser.add_argument("--probs", action="store_true", help="also save probabilities (.npy)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    return parser


def run(args: argparse.Namespace) -> int:
    """Segments every image; one line per image; returns the exit status."""
    url = check_url(args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}")
    failures = 0
    images = []
    for path in args.images:  # before any server contact
        if path.is_file():
            images.append(path)
        else:
            reason = "not a file" if path.exists() else "No such file or directory"
            print(f"error: cannot read {path}: {reason}", file=sys.stderr)
            failures += 1
    if not images:
        return 2
    segmenter = Segmenter(url, args.protocol, args.method, args.timeout)
    try:
        for path in images:
            try:
                data = path.read_bytes()
            except OSError as exc:
                print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
                failures += 1
                continue
            try:
                result = segmenter.segment(data, crf=not args.no_crf, probabilities=args.probs)
                if args.cam:
                    segmenter.cam(data, result)
            except ClientError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
            names = segmenter.class_names
            save_outputs(path, args.out, load_rgb(data), result, names)
            h, w = result.labels.shape
            found = ", ".join(f"{n} {percent(f)}" for n, f in classes_found(result.labels, names))
            timing = f"segment {result.seconds * 1000:.0f} ms"
            if args.cam:
                timing += f", cam {result.cam_seconds * 1000:.0f} ms"
            endpoint = segmenter.segment_model + (" without CRF" if args.no_crf else "")
            print(f"{path}: {w}x{h} [{endpoint}] {found} ({timing}) -> {args.out}")
    finally:
        segmenter.close()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
