"""Time to first token and to the whole answer: streamed vs plain /v1/ask, one client and eight.

Starts `ragserve serve` on a free loopback port with a registry of its own (so it serves the
bundled demo index), then for each concurrency (default 1 and 8) runs the demo questions as plain
requests and as streamed ones (`"stream": true`), alternating the two kinds round by round so
that both see the same machine. A plain answer's first token arrives with its last, so its time
to first token is its latency; a streamed one's is the first `event: token`. Also prints the
server's CPU time per request (from /proc), the steadier figure
on a shared machine.

    python -m bench.streaming [--clients 1 8] [--rounds 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from importlib.resources import files
from pathlib import Path

import httpx

from bench.common import header, percentile
from bench.latency import free_port, wait_ready

QUESTIONS = Path(str(files("indexer").joinpath("data", "demo_questions.jsonl")))


def plain(client: httpx.Client, question: str) -> tuple[float, float]:
    started = time.perf_counter()
    client.post("/v1/ask", json={"question": question}).raise_for_status()
    took = (time.perf_counter() - started) * 1000
    return took, took


def streamed(client: httpx.Client, question: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/ask", json={"question": question, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("event: token"):
                first = (time.perf_counter() - started) * 1000
    total = (time.perf_counter() - started) * 1000
    return (first if first is not None else total), total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(base: str, pid: int, kind: str, questions: list[str], clients: int) -> tuple[list[float], list[float], float]:
    """(first-token ms, whole-answer ms, server CPU ms per request) of `clients` threads that
    each ask every question once."""
    call = streamed if kind == "streamed" else plain
    firsts: list[float] = []
    totals: list[float] = []

    def client(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in range(len(questions)):
                first, total = call(http, questions[(i + offset) % len(questions)])
                firsts.append(first)
                totals.append(total)

    cpu = cpu_seconds(pid)
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return firsts, totals, (cpu_seconds(pid) - cpu) * 1000 / len(totals)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2, help="alternating plain/streamed passes per concurrency")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    header("Streamed vs plain /v1/ask: time to first token and to the whole answer")
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    port = free_port()
    with tempfile.TemporaryDirectory() as registry:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "RAGSERVE_TORCH_THREADS": str(args.threads),
            "RAGSERVE_REGISTRY_DIR": registry,
        }
        cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
        server = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, server)
            with httpx.Client(base_url=base, timeout=120) as warm:
                plain(warm, questions[0])
                streamed(warm, questions[0])
            report(base, server.pid, questions, args.clients, args.rounds)
        finally:
            server.terminate()
            server.wait(timeout=60)


def report(base: str, pid: int, questions: list[str], concurrency: list[int], rounds: int) -> None:
    print(f"demo index, {len(questions)} demo questions per client per pass, {rounds} passes of each kind")
    columns = ("first p50", "first p95", "whole p50", "whole p95")
    print(f"{'clients':>7} {'kind':<9}{'n':>5}" + "".join(f"{c:>11}" for c in columns) + f"{'cpu ms/req':>12}")
    for clients in concurrency:
        figures: dict[str, tuple[list[float], list[float], list[float]]] = {
            k: ([], [], []) for k in ("plain", "streamed")
        }
        for _ in range(rounds):
            for kind in ("plain", "streamed"):
                firsts, totals, cpu = run(base, pid, kind, questions, clients)
                figures[kind][0].extend(firsts)
                figures[kind][1].extend(totals)
                figures[kind][2].append(cpu)
        for kind, (firsts, totals, cpus) in figures.items():
            print(
                f"{clients:>7} {kind:<9}{len(totals):>5}{percentile(firsts, 50):>11.0f}{percentile(firsts, 95):>11.0f}"
                f"{percentile(totals, 50):>11.0f}{percentile(totals, 95):>11.0f}{sum(cpus) / len(cpus):>12.1f}"
            )
        (pf, pt, pc), (sf, st, sc) = figures["plain"], figures["streamed"]
        print(
            f"{clients:>7} ratios streamed/plain: first token p50 {percentile(sf, 50) / percentile(pf, 50):.2f}, "
            f"whole answer p50 {percentile(st, 50) / percentile(pt, 50):.2f}, "
            f"cpu/request {(sum(sc) / len(sc)) / (sum(pc) / len(pc)):.2f}"
        )


if __name__ == "__main__":
    main()
