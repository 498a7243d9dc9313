"""Overload: far more /v1/ask clients than the server takes, against the default settings.

    python -m bench.overload [--clients 64] [--seconds 30] [--baseline-clients 8] [--baseline-seconds 20]
                             [--honor-retry-after]

A real `ragserve serve` on loopback with the defaults (demo index, `stuff` reader, admission
limits of service/settings.py). First `--baseline-clients` closed-loop clients (the load the
server is sized for) give the baseline p50; then `--clients` closed-loop clients for `--seconds`,
each sending its next question as soon as the last one is answered or refused (no back-off: the
worst case; with `--honor-retry-after` a refused client first waits the `Retry-After` the server
sent, as a well-behaved HTTP client does). On one 2-core machine the clients' own CPU competes
with the server's, so the worst case here is worse than with the clients elsewhere. Meanwhile a
prober GETs /healthz every 50 ms and the server's resident memory is read every 0.5 s.

Goals (issue 16): no answer other than 2xx, 429 or 503; refusals p99 <= 50 ms; /healthz p99 <=
50 ms; accepted requests' p50 <= 1.5x the baseline p50; resident memory bounded.
"""

import argparse
import http.client
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import header, percentile
from bench.latency import QUESTIONS
from bench.load import served


@dataclass
class Outcomes:
    by_status: dict[int, list[float]] = field(default_factory=dict)  # status -> latencies (ms)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, ms: float) -> None:
        with self.lock:
            self.by_status.setdefault(status, []).append(ms)

    def of(self, *statuses: int) -> list[float]:
        return [ms for s in statuses for ms in self.by_status.get(s, [])]


def client(port: int, questions: list[str], until: float, seed: int, out: Outcomes, backs_off: bool) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = seed
    while time.perf_counter() < until:
        body = json.dumps({"question": questions[i % len(questions)]})
        started = time.perf_counter()
        wait_s = 0.0
        try:
            conn.request("POST", "/v1/ask", body, {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
            if backs_off and status in (429, 503):
                wait_s = min(float(response.getheader("retry-after") or 1), max(0.0, until - time.perf_counter()))
        except (OSError, http.client.HTTPException):
            status = 0  # connection failure: counted, and a fresh connection
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out.add(status, (time.perf_counter() - started) * 1000)
        time.sleep(wait_s)
        i += 1


def probe(port: int, until: float, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            return  # the server is gone: the run is over
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_rss(pid: int, until: float, out: list[float]) -> None:
    while time.perf_counter() < until:
        out.append(rss_mib(pid))
        time.sleep(0.5)


def run(
    port: int, pid: int, questions: list[str], clients: int, seconds: float, backs_off: bool = False
) -> tuple[Outcomes, list[float], list[float]]:
    until = time.perf_counter() + seconds
    outcomes, health, rss = Outcomes(), [], []
    threads = [
        threading.Thread(target=client, args=(port, questions, until, c, outcomes, backs_off)) for c in range(clients)
    ]
    threads += [
        threading.Thread(target=probe, args=(port, until, health)),
        threading.Thread(target=sample_rss, args=(pid, until, rss)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, health, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--baseline-clients", type=int, default=8)
    ap.add_argument("--baseline-seconds", type=float, default=20)
    ap.add_argument("--honor-retry-after", action="store_true", help="refused clients wait Retry-After")
    args = ap.parse_args()
    manner = "waiting Retry-After when refused" if args.honor_retry_after else "no back-off"
    header(f"overload: {args.clients} closed-loop /v1/ask clients ({manner}) for {args.seconds:.0f} s, defaults")
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    with served(None, {}) as (port, process):
        run(port, process.pid, questions, 2, 5)  # warm-up
        cpu_start = cpu_s(process.pid)
        base, base_health, _ = run(port, process.pid, questions, args.baseline_clients, args.baseline_seconds)
        cpu_base, rss_before = cpu_s(process.pid) - cpu_start, rss_mib(process.pid)
        load, health, rss = run(port, process.pid, questions, args.clients, args.seconds, args.honor_retry_after)
        cpu_load, rss_after = cpu_s(process.pid) - cpu_start - cpu_base, rss_mib(process.pid)
    base_p50 = percentile(base.of(200), 50)
    accepted, refused = load.of(200), load.of(429, 503)
    other = {s: len(v) for s, v in load.by_status.items() if s not in (200, 429, 503)}
    print(
        f"baseline ({args.baseline_clients} clients): {len(base.of(200))} answered, p50 {base_p50:.0f} ms, "
        f"/healthz p99 {percentile(base_health, 99):.1f} ms"
    )
    print("| figure | value | goal |")
    print("|---|---:|---|")
    print(f"| answered (200) | {len(accepted)} ({len(accepted) / args.seconds:.2f}/s) | |")
    print(f"| refused 429 / 503 | {len(load.of(429))} / {len(load.of(503))} | |")
    print(f"| any other status | {sum(other.values())} {other or ''} | 0 |")
    if refused:
        p50, p99 = percentile(refused, 50), percentile(refused, 99)
        print(f"| refusal latency p50 / p99 | {p50:.1f} / {p99:.1f} ms | p99 <= 50 ms |")
    else:
        print("| refusal latency | no refusals | |")
    print(f"| accepted p50 / p99 | {percentile(accepted, 50):.0f} / {percentile(accepted, 99):.0f} ms | |")
    print(f"| accepted p50 / baseline p50 | {percentile(accepted, 50) / base_p50:.2f}x | <= 1.5x |")
    per_base, per_load = cpu_base / max(1, len(base.of(200))), cpu_load / max(1, len(accepted))
    print(f"| server CPU per answer, baseline / overload | {per_base:.2f} / {per_load:.2f} s | |")
    print(f"| /healthz p50 / p99 | {percentile(health, 50):.1f} / {percentile(health, 99):.1f} ms | p99 <= 50 ms |")
    print(f"| server RSS before / max / after | {rss_before:.0f} / {max(rss):.0f} / {rss_after:.0f} MiB | bounded |")


if __name__ == "__main__":
    main()
