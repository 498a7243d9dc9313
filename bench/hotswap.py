"""Hot swap under load: concurrent /v1/retrieve clients against a real server on loopback, first in
steady state, then while the admin API switches versions back and forth (refreshes and rollbacks).

Reports p50/p99 latency in both phases (and their ratio), swap durations, non-2xx responses, and
responses whose version was not serving at any moment of their request (a stale read).

    python -m bench.hotswap [--clients 16] [--steady 10] [--swapping 30] [--swaps 20]
"""

import argparse
import functools
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import header, percentile
from bench.latency import free_port, wait_ready

QUERIES = ["Who built the bridge?", "Where is the festival held?", "How long is the cheese ripened?", "mayor"]


@dataclass(frozen=True, slots=True)
class Call:
    start: float
    end: float
    status: int
    version: str


@dataclass(frozen=True, slots=True)
class Switch:
    start: float
    end: float
    version: str
    seconds: float


@dataclass
class LoadReport:
    steady: list[Call] = field(default_factory=list)
    swapping: list[Call] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    initial: str = ""

    def failures(self) -> list[Call]:
        return [c for c in self.steady + self.swapping if not 200 <= c.status < 300]

    def stale(self) -> list[Call]:
        """Responses whose version served at no moment between their request's start and end.
        Version i may serve from the start of the switch to it until the end of the next switch."""
        epochs = [(float("-inf"), self.initial)] + [(s.start, s.version) for s in self.switches]
        ends = [s.end for s in self.switches] + [float("inf")]
        return [
            c
            for c in self.steady + self.swapping
            if not any(
                v == c.version and begin <= c.end and c.start <= end
                for (begin, v), end in zip(epochs, ends, strict=True)
            )
        ]


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, object]) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def _switch(admin: http.client.HTTPConnection, action: str, version: str) -> float:
    """Roll back (answered when done) or refresh (a job, followed until done); the switch's seconds."""
    status, body = _post(admin, f"/admin/indexes/default/{action}", {"version": version})
    if action == "refresh" and status == 202:
        status, body = _wait_job(admin, str(body["job_id"]))
        body = body.get("index") or body
    if status != 200 or "seconds" not in body:
        raise RuntimeError(f"{action} to {version} failed: {status} {body}")
    return float(str(body["seconds"]))


def _wait_job(conn: http.client.HTTPConnection, job_id: str, seconds: float = 120) -> tuple[int, dict[str, Any]]:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.request("GET", f"/v1/jobs/{job_id}")
        response = conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200 or body["state"] in ("done", "failed"):
            return response.status if body.get("state") != "failed" else 500, body
        time.sleep(0.01)
    raise RuntimeError(f"job {job_id} did not finish in {seconds} s")


def _client(port: int, until: float, out: list[Call], seed: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = seed
    while (now := time.perf_counter()) < until:
        status, body = _post(conn, "/v1/retrieve", {"query": QUERIES[i % len(QUERIES)], "top_k": 3})
        out.append(Call(now, time.perf_counter(), status, str(body.get("index_version", ""))))
        i += 1
    conn.close()


def _phase(port: int, clients: int, seconds: float) -> list[Call]:
    until = time.perf_counter() + seconds
    results: list[list[Call]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=_client, args=(port, until, results[i], i)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [call for calls in results for call in calls]


def run_load(port: int, versions: list[str], clients: int, steady: float, swapping: float, swaps: int) -> LoadReport:
    """`versions[0]` must be serving. Swaps walk forward with refresh and back with rollback."""
    report = LoadReport(initial=versions[0])
    report.steady = _phase(port, clients, steady)
    # forward through the versions with refresh, back with rollback: v1 v2 v3 v2 v1 v2 ...
    walk = versions + versions[-2:0:-1]
    targets = [walk[(i + 1) % len(walk)] for i in range(swaps)]
    load = threading.Thread(target=lambda: report.swapping.extend(_phase(port, clients, swapping)))
    load.start()
    admin = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    pause = swapping / (swaps + 1)
    current = versions[0]
    for target in targets:
        time.sleep(pause)
        action = "rollback" if versions.index(target) < versions.index(current) else "refresh"
        started = time.perf_counter()
        seconds = _switch(admin, action, target)
        report.switches.append(Switch(started, time.perf_counter(), target, seconds))
        current = target
    load.join()
    admin.close()
    return report


def start_server(
    index: Path, registry: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": str(registry), **(extra_env or {})}
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--index", str(index)]
    server = subprocess.Popen([*cmd, "--port", str(port)], env=env)
    wait_ready(f"http://127.0.0.1:{port}", server)
    return server


def make_versions(registry_root: Path) -> tuple[Path, list[str]]:
    """Three small versions of the `default` index; returns the first one's path and all ids."""
    from indexer.build import build_artifact
    from ragserve.types import Document
    from retriever.registry import IndexRegistry
    from service.application.loading import build_config, make_encoder
    from service.settings import Settings

    settings = Settings()
    encoder, config = make_encoder(settings), build_config(settings)
    registry = IndexRegistry(registry_root, "default")
    base = [
        Document("bridge", "Harrow bridge", "The Harrow bridge was built in 1871 by Tomas Brell."),
        Document("festival", "Zorblat", "The Zorblat festival is held every spring in Quenmoor."),
        Document("cheese", "Velt cheese", "Velt cheese is ripened for nine months in limestone caves."),
    ]

    def build_one(docs: list[Document], out: Path) -> None:
        build_artifact(docs, out, encoder, config, progress=False)

    versions = []
    for n in range(3):
        docs = [*base, *(Document(f"extra-{n}-{i}", "", f"Extra note {i} of version {n}.") for i in range(n + 1))]
        versions.append(registry.add(functools.partial(build_one, docs)))
    return registry.path_of(versions[0]), versions


def summarize(report: LoadReport, clients: int) -> str:
    def ms(calls: list[Call], q: float) -> float:
        return percentile([(c.end - c.start) * 1000 for c in calls], q)

    swap_s = [s.seconds for s in report.switches]
    lines = [
        f"clients={clients}; steady {len(report.steady)} requests, swapping {len(report.swapping)} requests, "
        f"{len(report.switches)} switches (refresh and rollback)",
        f"{'phase':<12}{'p50 ms':>9}{'p99 ms':>9}",
        f"{'steady':<12}{ms(report.steady, 50):>9.1f}{ms(report.steady, 99):>9.1f}",
        f"{'swapping':<12}{ms(report.swapping, 50):>9.1f}{ms(report.swapping, 99):>9.1f}",
        f"p50 ratio swapping/steady: {ms(report.swapping, 50) / ms(report.steady, 50):.2f}x; "
        f"p99 ratio: {ms(report.swapping, 99) / ms(report.steady, 99):.2f}x",
        f"swap duration (load+verify+warm+swap): p50 {percentile(swap_s, 50) * 1000:.0f} ms, "
        f"max {max(swap_s) * 1000:.0f} ms",
        f"non-2xx responses: {len(report.failures())}; stale versions: {len(report.stale())}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--steady", type=float, default=10.0)
    ap.add_argument("--swapping", type=float, default=30.0)
    ap.add_argument("--swaps", type=int, default=20)
    args = ap.parse_args()
    header("hot swap under load, real server on loopback")
    with tempfile.TemporaryDirectory() as tmp:
        index, versions = make_versions(Path(tmp))
        port = free_port()
        server = start_server(index, Path(tmp), port)
        try:
            report = run_load(port, versions, args.clients, args.steady, args.swapping, args.swaps)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(summarize(report, args.clients))


if __name__ == "__main__":
    main()
