"""A bounded load generator for a Triton endpoint: N threads, one tritonclient client each.

    from wsss.serving.load import run_load
    run_load("127.0.0.1:8000", "http", "cam_segment", jpeg_bytes, clients=4, requests_per_client=25)

    python -m wsss.serving.load photo.jpg --url 127.0.0.1:8001 --protocol grpc \\
        --model cam_segment --clients 4 --requests 25 [--no-crf]

Every client sends ``requests_per_client`` requests one after the other (closed loop), each with a
per-request timeout, so a run always ends. The clients start together (a barrier); the wall time
runs from that start to the last answer. Errors are counted and the first few messages kept; a
failed request is not counted in the latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

PROTOCOLS = ("http", "grpc")
MAX_MESSAGES = 5


def _client(url: str, protocol: str, timeout: float):
    """(tritonclient module, client) for ``protocol``."""
    if protocol == "http":
        import tritonclient.http as tc

        return tc, tc.InferenceServerClient(
            url, connection_timeout=timeout, network_timeout=timeout
        )
    if protocol == "grpc":
        import tritonclient.grpc as tc

        return tc, tc.InferenceServerClient(url)
    raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean/min/max in milliseconds of request times in seconds (None when empty)."""
    if not seconds:
        return dict.fromkeys(("p50", "p95", "p99", "mean", "min", "max"))
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "mean": round(float(ms.mean()), 2),
        "min": round(float(ms.min()), 2),
        "max": round(float(ms.max()), 2),
    }


def run_load(
    url: str,
    protocol: str,
    model: str,
    payload_bytes: bytes,
    clients: int,
    requests_per_client: int,
    parameters: dict | None = None,
    outputs: list[str] | None = None,
    input_name: str = "IMAGE_BYTES",
    timeout: float = 120.0,
) -> dict:
    """Drives ``model`` with ``clients`` concurrent closed-loop clients; returns the summary.

    ``payload_bytes`` goes as a UINT8 [n] tensor named ``input_name``; ``parameters`` are request
    parameters (e.g. ``{"crf": False}``); ``outputs`` limits the outputs returned (default all).
    Result keys: model, protocol, clients, requests, count (successful), errors, error_messages,
    wall_s, throughput_rps (successful requests per second), latency_ms (p50, p95, p99, mean,
    min, max).
    """
    if clients < 1 or requests_per_client < 1:
        raise ValueError("clients and requests_per_client must be >= 1")
    data = np.frombuffer(payload_bytes, dtype=np.uint8)
    barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    messages: list[str] = []
    errors = [0]

    def fail(exc: BaseException, count: int = 1) -> None:
        with lock:
            errors[0] += count
            if len(messages) < MAX_MESSAGES:
                messages.append(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])

    def worker() -> None:
        try:
            tc, client = _client(url, protocol, timeout)
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            barrier.wait()
            fail(exc, requests_per_client)
            return
        kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
        try:
            barrier.wait()
            for _ in range(requests_per_client):
                tensor = tc.InferInput(input_name, [len(data)], "UINT8")
                tensor.set_data_from_numpy(data)
                wanted = [tc.InferRequestedOutput(o) for o in outputs] if outputs else None
                start = time.perf_counter()
                try:
                    client.infer(model, [tensor], outputs=wanted, parameters=parameters, **kwargs)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    fail(exc)
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "model": model,
        "protocol": protocol,
        "clients": clients,
        "requests": clients * requests_per_client,
        "count": len(latencies),
        "errors": errors[0],
        "error_messages": messages,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 3) if wall > 0 else 0.0,
        "latency_ms": latency_summary(latencies),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.serving.load",
        description="Send one image to a Triton endpoint from N concurrent clients; print the "
        "throughput and latency percentiles as JSON.",
    )
    parser.add_argument("image", type=Path, help="encoded image file sent as IMAGE_BYTES")
    parser.add_argument("--url", default="127.0.0.1:8000", help="server HOST:PORT")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--model", required=True, help="endpoint, e.g. cam_segment or cam_cam")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--no-crf", action="store_true", help="send crf=false (segment endpoints)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_load(
        args.url,
        args.protocol,
        args.model,
        args.image.read_bytes(),
        args.clients,
        args.requests,
        parameters={"crf": False} if args.no_crf else None,
        timeout=args.timeout,
    )
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
