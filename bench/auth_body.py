"""Authentication before the body: unauthenticated 16 MiB POST /v1/documents against a server
with an admin token configured.

    python -m bench.auth_body [--rounds 20] [--concurrent 4] [--mib 16]

Each round, `--concurrent` raw connections send the headers of a `--mib` MiB JSON body (with a
wrong or no token) and then stream the body; the time from the end of the headers to the
response's status line is the figure (the goal is <= 50 ms and a 401). The server's resident
memory is read before and after all rounds, and /healthz is timed while they run.
"""

import argparse
import socket
import threading
import time

from bench.common import header, percentile
from bench.load import served
from bench.overload import probe, rss_mib
from service.http.auth import new_token


def one(port: int, mib: int, authorization: str | None, out: list[tuple[int, float]]) -> None:
    size = mib * 1024 * 1024
    head = (
        f"POST /v1/documents HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n" + (f"Authorization: {authorization}\r\n" if authorization else "") + "\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    started = time.perf_counter()

    def stream_body() -> None:
        chunk = b'{"upsert": [' + b" " * (1 << 20)
        sent = 0
        try:
            while sent < size:
                sock.sendall(chunk[: size - sent])
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: exactly what should happen

    writer = threading.Thread(target=stream_body, daemon=True)
    writer.start()
    status_line = sock.makefile("rb").readline()
    elapsed = (time.perf_counter() - started) * 1000
    sock.close()
    out.append((int(status_line.split()[1]) if status_line else 0, elapsed))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    header(f"authentication before the body: unauthenticated {args.mib} MiB ingests, {args.concurrent} at a time")
    _, digest = new_token()
    with served(None, {"RAGSERVE_ADMIN_TOKEN_SHA256": digest}) as (port, process):
        before = rss_mib(process.pid)
        results: list[tuple[int, float]] = []
        health: list[float] = []
        prober = threading.Thread(target=probe, args=(port, time.perf_counter() + 3600, health), daemon=True)
        prober.start()
        for r in range(args.rounds):
            auth = None if r % 2 == 0 else "Bearer not-a-token"
            threads = [
                threading.Thread(target=one, args=(port, args.mib, auth, results)) for _ in range(args.concurrent)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        after = rss_mib(process.pid)
    statuses = sorted({s for s, _ in results})
    times = [ms for _, ms in results]
    print("| figure | value | goal |")
    print("|---|---:|---|")
    print(f"| requests | {len(results)} ({args.rounds} rounds x {args.concurrent}) | |")
    print(f"| statuses | {statuses} | [401] |")
    print(
        f"| time to the 401, p50 / p99 / max | {percentile(times, 50):.1f} / {percentile(times, 99):.1f} / "
        f"{max(times):.1f} ms | <= 50 ms |"
    )
    print(f"| server RSS before / after | {before:.0f} / {after:.0f} MiB | no growth |")
    print(f"| /healthz meanwhile p99 | {percentile(health, 99):.1f} ms | |")


if __name__ == "__main__":
    main()
