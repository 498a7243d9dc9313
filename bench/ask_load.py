"""/v1/ask under concurrent load: micro-batched generation vs one request at a time, in one run.

    python -m bench.ask_load [--clients 8] [--seconds 40]

Two fresh servers on loopback over the SQuAD v1.1 dev index (2,539 chunks; built and cached on
first use), default reader (`stuff`, top 1 passage): first with answer batching off
(RAGSERVE_ASK_BATCH_MAX=1: requests take turns on the generator), then on (the default). Each gets
1 client (a lone request's latency) and then `--clients` closed-loop clients. Questions are SQuAD
questions. The goal is requests/s at 8 clients >= 2x the sequential server's, with p50 latency
<= 1.5x a lone request's.
"""

import argparse
import os

from bench.common import SQUAD, header, percentile
from bench.load import phase, server
from ragserve.precision import resolve_precision
from service.application.evaluation import load_squad, spread_sample
from service.application.loading import cached_index_path, ensure_index, make_encoder
from service.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=40)
    args = ap.parse_args()
    header(f"/v1/ask under load: {args.clients} clients vs 1, {args.seconds:.0f} s each, batching off vs on")
    settings = Settings()
    data = load_squad(SQUAD)
    index = cached_index_path(settings, "squad", SQUAD)
    ensure_index(settings, index, lambda: data.paragraphs, lambda: make_encoder(settings), progress=True)
    bodies = [{"question": q.question} for q in spread_sample(data.questions, 1000)]
    precision = resolve_precision(settings.generator_precision, "cpu")
    print(
        f"index: SQuAD dev ({len(data.paragraphs)} paragraphs); reader {settings.default_reader}, top "
        f"{settings.ask_top_k}; max new tokens {settings.max_new_tokens}; generator {precision}; "
        f"torch threads {settings.torch_threads}; batch max {settings.ask_batch_max}, wait "
        f"{settings.ask_batch_wait_ms} ms; cores {os.cpu_count()}"
    )
    print("| answer batching | clients | requests/s | p50 ms | p99 ms | non-200 |")
    print("|---|---:|---:|---:|---:|---:|")
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for batching, extra in (("off", {"RAGSERVE_ASK_BATCH_MAX": "1"}), ("on (default)", {})):
        with server(index, extra) as port:
            phase(port, "/v1/ask", bodies, 2, 5)  # warm-up: prefix cache, kernels for a few shapes
            for clients in (1, args.clients):
                times, errors = phase(port, "/v1/ask", bodies, clients, args.seconds)
                rate, p50, p99 = len(times) / args.seconds, percentile(times, 50), percentile(times, 99)
                results[batching.split()[0], clients] = (rate, p50)
                print(f"| {batching} | {clients} | {rate:.2f} | {p50:.0f} | {p99:.0f} | {errors} |", flush=True)
    (off_rate, _), (on_rate, on_p50) = results["off", args.clients], results["on", args.clients]
    lone = results["on", 1][1]
    print(
        f"\n{args.clients} clients: batching on / off = {on_rate / off_rate:.2f}x requests/s; "
        f"p50 with batching / lone request = {on_p50 / lone:.2f}x"
    )


if __name__ == "__main__":
    main()
