"""A real `ragserve serve`: the port answers before the models are in, and SIGTERM drains: /readyz
503 at once, new model work 503, requests in flight finish, exit 0 within shutdown_grace_s."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.latency import free_port

GRACE_S = 15.0


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _ask(url: str, question: str, reader: str = "stuff") -> tuple[int, dict[str, object]]:
    body = json.dumps({"question": question, "reader": reader}).encode()
    request = urllib.request.Request(url + "/v1/ask", body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sigterm_drains_in_flight_requests_and_exits_zero_within_the_grace(
    tiny_index: Path, cache_home: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGSERVE_HOME": str(cache_home),
        "RAGSERVE_REGISTRY_DIR": str(tmp_path / "registry"),
        "RAGSERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "RAGSERVE_ADAPTER": "none",
        "RAGSERVE_MAX_NEW_TOKENS": "32",
        "RAGSERVE_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--index", str(tiny_index)]
    server = subprocess.Popen([*cmd, "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                status, body = _get(base + "/readyz")
            except OSError:
                time.sleep(0.05)
                continue
            seen.append(str(body["status"]))
            if status == 200:
                break
            time.sleep(0.05)
        assert seen[0] == "loading" and seen[-1] == "ready", seen  # the port opened before the models were in

        assert _ask(base, "Who built the Harrow bridge?")[0] == 200  # warm-up: the first answer compiles kernels
        answers: list[int] = []
        question = "Describe the Zorblat festival at length."
        # rag-sequence answers one request at a time: the last of three is surely still in flight
        askers = [threading.Thread(target=lambda: answers.append(_ask(base, question, "rag-sequence")[0]))]
        askers += [threading.Thread(target=lambda: answers.append(_ask(base, question)[0])) for _ in range(2)]
        for asker in askers:
            asker.start()
        time.sleep(0.5)  # they are decoding
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        in_flight = 3 - len(answers)
        time.sleep(0.2)
        status, body = _get(base + "/readyz")
        assert status == 503 and body["status"] == "draining"
        status, body = _ask(base, "Who built the Harrow bridge?")
        assert status == 503 and body["error"]["code"] == "draining"  # type: ignore[index]
        for asker in askers:
            asker.join(timeout=GRACE_S + 5)
        assert answers == [200, 200, 200] and in_flight >= 1
        assert server.wait(timeout=GRACE_S + 5) == 0
        assert time.monotonic() - signalled <= GRACE_S + 1.0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
