"""Several ragserve replicas on one store, as real processes on loopback ports: what the replica
tests (tests/test_replicas.py) and benchmarks (bench/replicas.py) run.

    with postgres_server() as pg, replicas(3, index, registry, pg.url) as nodes:
        nodes[0].post("/v1/documents", {...}); nodes[1].post("/v1/retrieve", {...})

Every replica serves the same `--index` from one registry directory (the shared volume) and
shares documents, jobs, the serving pointer and the replica list through `database_url`
(PostgreSQL), or through the registry's SQLite file when it is None.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.latency import free_port, wait_ready

# Replicas that notice a dead one quickly (tests kill them); the defaults are 1 s and 10 s.
FAST_FAILOVER = {"RAGSERVE_HEARTBEAT_S": "0.2", "RAGSERVE_REPLICA_TIMEOUT_S": "1.5"}


@dataclass
class Node:
    """One replica process and a connection to it."""

    port: int
    process: subprocess.Popen[bytes]
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        """(status, parsed JSON body); a fresh connection per call (safe from any thread)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"content-type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, signalled: bool = False) -> None:
        """SIGTERM (unless `signalled` already: a second one exits without draining), then wait."""
        if self.process.poll() is None:
            if not signalled:
                self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def replica_env(registry: Path, database_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": str(registry), **(extra or {})}
    if database_url is not None:
        env["RAGSERVE_DATABASE_URL"] = database_url
    else:
        env.pop("RAGSERVE_DATABASE_URL", None)
    return env


def start_node(index: Path, env: Mapping[str, str], log_level: str = "warning") -> Node:
    """A replica process (not waited for: see `wait_nodes`)."""
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "--log-level", log_level, "serve", "--index", str(index)]
    return Node(port, subprocess.Popen([*cmd, "--port", str(port)], env=dict(env)))


def wait_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        wait_ready(node.base, node.process)


@contextmanager
def replicas(
    n: int,
    index: Path,
    registry: Path,
    database_url: str | None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[list[Node]]:
    """`n` replicas started together (the first alone, so the registry imports `index` once),
    ready when the block begins, stopped (SIGTERM, drained) when it ends."""
    env = replica_env(registry, database_url, extra_env)
    nodes = [start_node(index, env)]
    try:
        wait_nodes(nodes)
        nodes += [start_node(index, env) for _ in range(n - 1)]
        wait_nodes(nodes)
        yield nodes
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            node.stop(signalled=True)


def wait_until(condition: Any, seconds: float = 60, every: float = 0.02) -> float:
    """Poll `condition()` until it is true; the seconds it took (AssertionError on timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not true after {seconds} s")
        time.sleep(every)
    return time.monotonic() - started


def serving_versions(nodes: list[Node]) -> list[str | None]:
    """The version each replica's /readyz reports (None where it does not answer 200)."""
    found = []
    for node in nodes:
        try:
            status, body = node.get("/readyz")
        except OSError:
            status, body = 0, None
        found.append(body["index_version"] if status == 200 else None)
    return found
