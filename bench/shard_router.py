"""The shard router (issue 18): retrieval latency through Ray Serve's router over 2 shard groups,
against one retriever serving every shard in-process, on SQuAD v1.1 dev.

    python -m bench.shard_router [--data ../shared/data/squad-v1.1-dev.parquet] [--queries 200] [--shards 2]

One `--shards`-shard artifact of every SQuAD paragraph (the default index type), then, for
`--queries` questions sent one at a time (closed loop, one client, dense top 5):

- **in-process, all shards**: a VersionRetriever over every shard, called directly (no HTTP).
- **in-process router**: retriever/router.py's ShardRouter over 2 in-process VersionRetrievers
  of half the shards each: the fan-out and merge alone.
- **Ray router**: 2 shard-group applications (1 replica, 1 torch thread each) and the router
  (service/rayserve/shards.py) on a local Ray, every request through Serve's HTTP proxy; the
  store is SQLite in a shared registry (one machine). CPU per request: utime+stime of every
  process Ray started (replicas, router, proxy, controller, raylet, GCS), from /proc.

p50/p90 are per request, wall time at the client; the results of the router are checked equal
(scores to 1e-5) to the all-shard retriever's for every question.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.common import SQUAD, header, percentile
from bench.latency import free_port
from bench.ray_replicas import descendants
from bench.replicas import cpu_s

TOP_K = 5


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(call: Callable[[str], list[tuple[str, float]]], queries: list[str]) -> tuple[list[float], list[list[float]]]:
    """Per-query wall ms and the returned scores, after 5 warm-up calls."""
    for q in queries[:5]:
        call(q)
    ms, scores = [], []
    for q in queries:
        t0 = time.perf_counter()
        found = call(q)
        ms.append((time.perf_counter() - t0) * 1000)
        scores.append([s for _, s in found])
    return ms, scores


def ray_cpu_s() -> float:
    return sum(cpu_s(p) for p in descendants(os.getpid()) - {os.getpid()})


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def run_ray(index: Path, root: Path, shards: int, queries: list[str]) -> tuple[list[float], list[list[float]], float]:
    import ray
    from ray import serve

    from service.rayserve.engine import deploy
    from service.rayserve.shards import sharded_config, split_shards

    overrides = {"index_path": str(index), "registry_dir": str(root / "registry"), "encoder_precision": "fp32"}
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAGSERVE_TORCH_THREADS": "1"}
    apps = sharded_config(overrides, split_shards(shards, 2), 1, 0.5, env, {"log_level": "warning", "adapter": "none"})
    port = free_port()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.monotonic()
        deploy(apps, timeout_s=600)
        _progress(f"2 shard groups and the router ready in {time.monotonic() - started:.0f} s")
        url = f"http://127.0.0.1:{port}/v1/retrieve"

        def call(q: str) -> list[tuple[str, float]]:
            body = post(url, {"query": q, "top_k": TOP_K, "retrieval": "dense"})
            return [(str(p["chunk_id"]), float(p["score"])) for p in body["passages"]]  # type: ignore[attr-defined]

        cpu0 = ray_cpu_s()
        ms, scores = timed(call, queries)
        cpu = (ray_cpu_s() - cpu0) / (len(queries) + 5)
        return ms, scores, cpu
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SQUAD)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--shards", type=int, default=2, help="shards of the artifact (split into 2 groups)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from indexer.build import build_artifact
    from ragserve.types import RetrievalMode
    from retriever.router import ShardRouter
    from retriever.version import VersionRetriever
    from service.application.evaluation import load_squad, spread_sample
    from service.application.loading import build_config, make_encoder, search_config
    from service.rayserve.shards import split_shards
    from service.settings import Settings

    torch.set_num_threads(1)  # as each replica runs
    settings = Settings(encoder_precision="fp32")
    encoder, search = make_encoder(settings), search_config(settings)
    squad = load_squad(args.data)
    queries = [q.question for q in spread_sample(squad.questions, args.queries)]
    header("shard router: retrieval through Ray Serve's router over 2 shard groups vs all shards in-process")
    with tempfile.TemporaryDirectory(prefix="bench-shard-router-") as tmp:
        index = Path(tmp) / "squad"
        started = time.monotonic()
        build_artifact(squad.paragraphs, index, encoder, build_config(settings, shards=args.shards), progress=False)
        _progress(
            f"{len(squad.paragraphs)} paragraphs, {args.shards} shards built in {time.monotonic() - started:.0f} s"
        )
        whole = VersionRetriever(index, encoder, search)
        groups = {str(s): VersionRetriever(index, encoder, search, shards=s) for s in split_shards(args.shards, 2)}
        router = ShardRouter(groups)

        def direct(r: VersionRetriever | ShardRouter) -> Callable[[str], list[tuple[str, float]]]:
            return lambda q: [(p.chunk_id, p.score) for p in r.search(q, TOP_K, RetrievalMode.DENSE).passages]

        cpu0 = time.process_time()
        base_ms, want = timed(direct(whole), queries)
        base_cpu = (time.process_time() - cpu0) / (len(queries) + 5)
        cpu0 = time.process_time()
        local_ms, local = timed(direct(router), queries)
        local_cpu = (time.process_time() - cpu0) / (len(queries) + 5)
        router.close()
        ray_ms, remote, ray_cpu = run_ray(index, Path(tmp), args.shards, queries)
    print(f"corpus: {len(squad.paragraphs)} paragraphs, {whole.size} chunks, {args.shards} shards")
    print(f"{len(queries)} questions, one at a time, dense top {TOP_K}; CPU per request in ms")
    print(f"{'setup':<34} {'p50 ms':>8} {'p90 ms':>8} {'CPU ms':>8}  same results")
    for label, ms, got, cpu in (
        ("in-process, all shards", base_ms, want, base_cpu),
        ("in-process router, 2 groups", local_ms, local, local_cpu),
        ("Ray router, 2 groups (HTTP)", ray_ms, remote, ray_cpu),
    ):
        same = all(_close(g, w) for g, w in zip(got, want, strict=True))
        print(f"{label:<34} {percentile(ms, 50):>8.2f} {percentile(ms, 90):>8.2f} {cpu * 1000:>8.2f}  {same}")


def _close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= 1e-5 for a, b in zip(got, want, strict=True))


if __name__ == "__main__":
    main()
