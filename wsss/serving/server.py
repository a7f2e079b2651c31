"""Start and stop a local Triton server on loopback: ``with TritonServer(repo) as server: ...``.

The server is the Triton binary shipped in ``nvidia-pytriton`` (see :mod:`wsss.serving.bundle`).
It listens on 127.0.0.1 only. Models with ``platform: "onnxruntime_onnx"`` run through the
Python-based ``onnxruntime`` backend in ``serving/backends/onnxruntime/model.py``: a CPU
development substitute for Triton's C++ ONNX Runtime backend, not a replacement for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from wsss.serving.bundle import assemble_backends, find_bundle, server_environment

HOST = "127.0.0.1"


def default_python_backends() -> Path | None:
    """``serving/backends`` of this source checkout, if there is one."""
    path = Path(__file__).resolve().parents[2] / "serving" / "backends"
    return path if path.is_dir() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not start or become ready; the message quotes the end of its log."""


class TritonServer:
    """A ``tritonserver`` child process serving ``repository`` on 127.0.0.1.

    Ports given as 0 are picked free. Use as a context manager, or call :meth:`start` and
    :meth:`stop`; the process is always stopped (SIGINT, then SIGKILL after a grace period).
    """

    def __init__(
        self,
        repository: str | Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_path: str | Path | None = None,
        python_backends: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = 180.0,
        verbose: bool = False,
    ):
        self.repository = Path(repository).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.python_backends = (
            Path(python_backends) if python_backends is not None else default_python_backends()
        )
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.verbose = verbose
        self._workdir: Path | None = None
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self._log = None
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def command(self, backend_dir: Path, cache_dir: Path) -> list[str]:
        """The ``tritonserver`` command line (loopback addresses, short exit timeout)."""
        bundle = find_bundle()
        return [
            str(bundle.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={cache_dir}",
            f"--http-address={HOST}",
            f"--grpc-address={HOST}",
            f"--metrics-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
            f"--log-verbose={1 if self.verbose else 0}",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Starts the server and waits until ``/v2/health/ready``; raises ServerError if not."""
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} is not a directory")
        bundle = find_bundle()
        self._workdir = Path(tempfile.mkdtemp(prefix="wsss-triton-"))
        backends = assemble_backends(bundle, self._workdir / "backends", self.python_backends)
        if self.log_path is None:
            self.log_path = self._workdir / "tritonserver.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(backends, bundle.caches),
            env=server_environment(bundle),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop the server
        )
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        """True when the server answers ``GET /v2/health/ready`` with 200."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Polls readiness; raises ServerError if the process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"tritonserver exited during start-up\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 15.0) -> None:
        """Stops the server: SIGINT, then SIGKILL after ``grace`` seconds; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    # The whole session: stub processes are the server's children.
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)  # backends (and the log if ours)
            self._workdir = None
            if self._own_log:
                self.log_path = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
