"""The load generator shared by the load benchmarks: a real `ragserve serve` on a loopback port, and
closed-loop clients (each sends its next request when the last one is answered) for a bounded time."""

import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.latency import free_port, wait_ready


@contextmanager
def server(index: Path | None, env: Mapping[str, str]) -> Iterator[int]:
    """A fresh server (own temporary registry) serving `index` (None: the demo index) with extra
    environment `env`; its port."""
    with served(index, env) as (port, _):
        yield port


@contextmanager
def served(index: Path | None, env: Mapping[str, str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`server`, and its process."""
    port = free_port()
    with tempfile.TemporaryDirectory() as registry:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": registry, **env}
        cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
        process = subprocess.Popen([*cmd, *(["--index", str(index)] if index else [])], env=full_env)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process)
            yield port, process
        finally:
            process.terminate()
            process.wait(timeout=30)


def _client(
    port: int, path: str, bodies: list[dict[str, Any]], until: float, seed: int, out: list[float], errors: list[int]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = random.Random(seed).randrange(len(bodies))
    while time.perf_counter() < until:
        body = json.dumps(bodies[i % len(bodies)])
        started = time.perf_counter()
        conn.request("POST", path, body, {"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            errors.append(response.status)
        i += 1


def phase(port: int, path: str, bodies: list[dict[str, Any]], clients: int, seconds: float) -> tuple[list[float], int]:
    """`clients` closed-loop clients POST `bodies` (each from its own random start) to `path` for
    `seconds` -> (latency of every answered request in ms, number of non-200 answers)."""
    until = time.perf_counter() + seconds
    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = []
    threads = [
        threading.Thread(target=_client, args=(port, path, bodies, until, port + c, times[c], errors))
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [ms for per in times for ms in per], len(errors)
