"""One real ragserve process for the tests of the surfaces that real clients use: the Python
client, the `openai` package, the browser. Started once per test session on a loopback port, on the
tiny index, with an admin and a read token; tests that ingest give their documents ids of their own,
since they share its store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.latency import free_port, wait_ready

ADMIN_TOKEN = "live-admin-token-for-the-tests"
READ_TOKEN = "live-read-token-for-the-tests"


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    admin_token: str
    read_token: str
    process: subprocess.Popen[bytes]
    log: Path


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="session")
def live_server(tiny_index: Path, cache_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("live")
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGSERVE_HOME": str(cache_home),
        "RAGSERVE_REGISTRY_DIR": str(folder / "registry"),
        "RAGSERVE_ADAPTERS_DIR": str(folder / "adapters"),
        "RAGSERVE_ADAPTER": "none",
        "RAGSERVE_ADMIN_TOKEN_SHA256": digest(ADMIN_TOKEN),
        "RAGSERVE_READ_TOKEN_SHA256": digest(READ_TOKEN),
    }
    env.pop("RAGSERVE_DATABASE_URL", None)
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--index", str(tiny_index), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield LiveServer(base, ADMIN_TOKEN, READ_TOKEN, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
