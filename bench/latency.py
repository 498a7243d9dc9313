"""End-to-end HTTP latency of /v1/retrieve and /v1/ask on a real server on loopback.

Starts `ragserve serve` on a free 127.0.0.1 port (default: the registry's serving version, the
demo index unless switched), sends the demo questions sequentially for a bounded number of
rounds, prints p50/p95 per endpoint, and stops it.

    python -m bench.latency [--index DIR] [--rounds 2] [--threads 2]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

from bench.common import header, percentile

QUESTIONS = Path(str(files("indexer").joinpath("data", "demo_questions.jsonl")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, object]) -> tuple[float, dict[str, object]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    return (time.perf_counter() - started) * 1000, payload


def wait_ready(base: str, server: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("server not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, help="artifact to serve (default: the demo index)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the demo questions")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    header("HTTP latency, sequential requests on loopback")
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_TORCH_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
    if args.index:
        cmd += ["--index", str(args.index)]
    server = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server)
        post(base + "/v1/ask", {"question": questions[0]})  # warm-up
        timings: dict[str, list[float]] = {"/v1/retrieve": [], "/v1/ask": []}
        for _ in range(args.rounds):
            for q in questions:
                timings["/v1/retrieve"].append(post(base + "/v1/retrieve", {"query": q})[0])
                timings["/v1/ask"].append(post(base + "/v1/ask", {"question": q})[0])
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = args.index or "the registry's serving version (the demo index unless switched)"
    print(f"threads={args.threads}; index={served}; {len(questions)} questions x {args.rounds} rounds")
    print(f"{'endpoint':<14}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for endpoint, values in timings.items():
        print(
            f"{endpoint:<14}{len(values):>5}{percentile(values, 50):>10.1f}{percentile(values, 95):>10.1f}"
            f"{statistics.fmean(values):>10.1f}"
        )


if __name__ == "__main__":
    main()
