"""Ray Serve local mode (issue 17): 2 replicas behind Serve's proxy, the same figures as for the
plain processes (bench/replicas.py), on the same machine and a real throwaway PostgreSQL.

    python -m bench.ray_replicas [--documents 100] [--clients 8] [--seconds 10] [--no-baseline]

- **Ray Serve**: `ragserve serve --engine ray --replicas 2` (a local Ray on this machine's cores,
  1 CPU and 1 torch thread per replica), every request through Serve's HTTP proxy.
- **plain processes** (the baseline, unless `--no-baseline`): 2 `ragserve serve` processes on
  loopback ports (bench/cluster.py), RAGSERVE_TORCH_THREADS=1 as well.

Figures:
- **freshness**: `--documents` single-document ingests, one at a time; the time from the `202`
  until a /v1/retrieve (top 3, the document's own text) returns it, polled every 10 ms; a miss:
  not found within 10 s. Through Ray's proxy neither request can be sent to a chosen replica, so
  the search may reach the replica that took the ingest: this is "202 -> searchable through the
  proxy". The plain processes alternate, and always search the *other* replica.
- **throughput**: `--clients` closed-loop /v1/retrieve clients for `--seconds` after 2 s of
  warm-up; requests/s and CPU time (utime+stime from /proc) per request: of the replica
  processes, of Ray's own processes (proxy, controller, raylet, GCS, the deploying CLI) and of
  PostgreSQL. The clients run on the same cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import Node, replica_env, replicas
from bench.common import header
from bench.hotswap import make_versions
from bench.latency import free_port
from bench.pgserver import PostgresServer, postgres_server
from bench.replicas import (
    FreshnessReport,
    Throughput,
    cpu_s,
    load,
    measure_freshness,
    measure_throughput,
    postgres_cpu_s,
)

THREADS = {"RAGSERVE_TORCH_THREADS": "1"}
WARMUP_S = 2.0


@dataclass
class Setup:
    label: str
    freshness: FreshnessReport
    throughput: Throughput
    system_cpu_s: float | None  # Ray's own processes (None: there are none)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (Ray's processes, the replica actors among them)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in found]
        found.update(children)
        frontier.extend(children)
    return found


def wait_replicas(node: Node, n: int, seconds: float = 600) -> list[int]:
    """Until `n` replicas are listed and answer /readyz 200 through the proxy; their pids."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"ragserve serve --engine ray exited with {node.process.returncode}")
        listed: list[dict[str, Any]] = []
        ready: set[str] = set()
        try:
            status, body = node.get("/admin/indexes")  # token-less: a loopback client, through the proxy
            listed = body["indexes"][0]["replicas"] if status == 200 else []
            for _ in range(4 * n):
                status, body = node.get("/readyz")
                if status == 200:
                    ready.add(body["replica"]["id"])
        except (OSError, KeyError, TypeError, ValueError):  # the proxy answers 404 in plain text at first
            pass
        if len(listed) == n and {r["id"] for r in listed} == ready:
            return [int(r["pid"]) for r in listed]
        time.sleep(0.5)
    raise RuntimeError(f"{n} replicas not ready behind the proxy after {seconds} s")


def ray_throughput(
    node: Node, replica_pids: list[int], clients: int, seconds: float, store_cpu: Callable[[], float]
) -> tuple[Throughput, float]:
    """bench/replicas.py's `measure_throughput` through the proxy: the CPU of the replica actors
    and, apart, of Ray's other processes (every process below the CLI's)."""
    with load([node], clients) as results:
        time.sleep(WARMUP_S)
        system = descendants(node.process.pid) - set(replica_pids)
        t0, own0, pg0 = time.perf_counter(), os.times(), store_cpu()
        cpu0, sys0 = sum(cpu_s(p) for p in replica_pids), sum(cpu_s(p) for p in system)
        time.sleep(seconds)
        t1, own1, pg1 = time.perf_counter(), os.times(), store_cpu()
        cpu1, sys1 = sum(cpu_s(p) for p in replica_pids), sum(cpu_s(p) for p in system)
    inside = [c for per in results for c in per if t0 <= c.end <= t1]
    throughput = Throughput(
        "ray",
        len(replica_pids),
        sum(1 for c in inside if 200 <= c.status < 300),
        sum(1 for c in inside if not 200 <= c.status < 300),
        t1 - t0,
        cpu1 - cpu0,
        pg1 - pg0,
        (own1.user + own1.system) - (own0.user + own0.system),
    )
    return throughput, sys1 - sys0


def run_ray(args: argparse.Namespace, index: Path, root: Path, pg: PostgresServer) -> Setup:
    env = replica_env(root / "registry-ray", pg.new_database(), THREADS)
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--engine", "ray"]
    process = subprocess.Popen([*cmd, "--replicas", "2", "--index", str(index), "--port", str(port)], env=env)
    node = Node(port, process)
    try:
        _progress("Ray Serve: waiting for 2 replicas behind the proxy")
        started = time.monotonic()
        pids = wait_replicas(node, 2)
        _progress(f"Ray Serve: 2 replicas ready after {time.monotonic() - started:.0f} s; freshness")
        freshness = measure_freshness([node, node], args.documents, tag="fresh-ray", store="ray")
        _progress("Ray Serve: throughput")
        throughput, system = ray_throughput(node, pids, args.clients, args.seconds, lambda: postgres_cpu_s(pg))
        return Setup("Ray Serve, local mode", freshness, throughput, system)
    finally:
        process.terminate()  # SIGTERM: the replicas drain and leave, Ray stops
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def run_plain(args: argparse.Namespace, index: Path, root: Path, pg: PostgresServer) -> Setup:
    _progress("plain processes: starting 2 replicas")
    with replicas(2, index, root / "registry-plain", pg.new_database(), THREADS) as nodes:
        _progress("plain processes: freshness")
        freshness = measure_freshness(nodes, args.documents, tag="fresh-plain", store="plain")
        _progress("plain processes: throughput")
        throughput = measure_throughput(
            nodes, args.clients, args.seconds, WARMUP_S, label="plain", store_cpu=lambda: postgres_cpu_s(pg)
        )
    return Setup("plain processes", freshness, throughput, None)


def print_setups(args: argparse.Namespace, setups: list[Setup]) -> None:
    print(f"\n## 2 replicas on PostgreSQL: Ray Serve local mode vs plain processes ({os.cpu_count()} cores)")
    print(
        f"freshness: {args.documents} single-document ingests, one at a time, 202 -> found by /v1/retrieve "
        "(top 3, polled every 10 ms; a miss: not found in 10 s). Ray: both requests through Serve's proxy, "
        "which picks the replica (it may be the one that took the ingest); plain: always the other replica."
    )
    print("| setup | documents | p50 | p99 | mean | max | misses |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        f = s.freshness
        mean = statistics.fmean(f.seconds) * 1000 if f.seconds else math.nan
        worst = max(f.seconds) * 1000 if f.seconds else math.nan
        print(
            f"| {s.label} | {f.documents} | {f.ms(50):.0f} ms | {f.ms(99):.0f} ms | {mean:.0f} ms | "
            f"{worst:.0f} ms | {len(f.misses)} |"
        )
        for m in f.misses:
            print(f"MISS {s.label} {m.doc_id}: {m.diagnosis}")
    print(
        f"\nthroughput: {args.clients} closed-loop /v1/retrieve clients, {args.seconds:g} s after {WARMUP_S:g} s of "
        "warm-up; CPU per request from /proc (utime+stime); the clients share the cores"
    )
    print(
        "| setup | requests/s | replica CPU per request | Ray's own CPU per request | server CPU per request "
        "| PostgreSQL CPU per request | non-2xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        t = s.throughput
        replica = t.per_request_ms(t.server_cpu_s)
        system = "-" if s.system_cpu_s is None else f"{t.per_request_ms(s.system_cpu_s):.2f} ms"
        total = t.per_request_ms(t.server_cpu_s + (s.system_cpu_s or 0.0))
        print(
            f"| {s.label} | {t.rps:.1f} | {replica:.2f} ms | {system} | {total:.2f} ms | "
            f"{t.per_request_ms(t.store_cpu_s):.2f} ms | {t.non_2xx} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=100, help="freshness: single-document ingests per setup")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="throughput: seconds measured per setup")
    ap.add_argument("--no-baseline", action="store_true", help="Ray Serve only, not the plain processes")
    args = ap.parse_args()
    header("2 replicas on Ray Serve (local mode) vs plain processes: freshness, throughput, CPU per request")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragserve-bench-ray-") as tmp, postgres_server() as pg:
        root = Path(tmp)
        index, _ = make_versions(root / "template")
        setups = [run_ray(args, index, root, pg)]
        if not args.no_baseline:
            setups.append(run_plain(args, index, root, pg))
    print_setups(args, setups)
    print(f"\ntook {time.perf_counter() - started:.0f} s (with starts and stops)")


if __name__ == "__main__":
    main()
