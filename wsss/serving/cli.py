"""``python serving/serve.py``: a local Triton server on loopback until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

from wsss.export.ensembles import source_repository
from wsss.serving.bundle import BundleError
from wsss.serving.server import HOST, ServerError, TritonServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving/serve.py",
        description="Serve a Triton model repository on 127.0.0.1 with the Triton binary shipped "
        "in nvidia-pytriton (CPU; ONNX models run through the Python-based onnxruntime backend "
        "in serving/backends, a development substitute for Triton's C++ ONNX Runtime backend).",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="Triton model repository (default: serving/model_repository of this checkout)",
    )
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (0: any free)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: any free)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0: any free)")
    parser.add_argument("--log", help="server log file (default: a temporary file)")
    parser.add_argument("--verbose", action="store_true", help="verbose server log")
    parser.add_argument(
        "--no-ensembles",
        action="store_true",
        help="do not (re)write the <method>_cam/_segment ensembles for the exported networks",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for ready")
    return parser


def model_states(http_url: str) -> list[tuple[str, str]]:
    """(name, state) of every model in the served repository."""
    request = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b"{}")
    with urllib.request.urlopen(request, timeout=10) as response:
        index = json.loads(response.read())
    return [(m["name"], m.get("state", "")) for m in index]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repository = args.repository or source_repository()
    if not repository.is_dir():
        print(f"error: model repository {repository} is not a directory", file=sys.stderr)
        return 2
    if not args.no_ensembles:
        from wsss.export.ensembles import RepositoryError, write_all

        try:
            written = write_all(repository)
        except RepositoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not written:
            print(
                f"note: no exported networks in {repository}; run "
                "python export/onnx.py RUN_DIR first (serving the shared models only)"
            )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    server = TritonServer(
        repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log,
        ready_timeout=args.timeout,
        verbose=args.verbose,
    )
    try:
        print(f"starting Triton on {HOST} with {repository} ...", flush=True)
        server.start()
        for name, state in model_states(server.http_url):
            print(f"  {name:<28} {state}")
        print(
            f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
            f"log: {server.log_path}\nCtrl-C to stop",
            flush=True,
        )
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        print(f"error: tritonserver exited\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    except (BundleError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
