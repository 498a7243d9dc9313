"""Ingest, then compact under load, against a full rebuild measured in the same run.

A real server on loopback serves an index of the first SQuAD v1.1 dev paragraphs; the rest are
ingested through POST /v1/documents (batches of 64); then, while 4 clients query /v1/retrieve,
POST /admin/indexes/default/refresh folds the delta into a new version. Baseline: building the
same documents from scratch with the indexer, in this process, with the same thread count.

    python -m bench.compaction [--base 1500] [--ingest 567] [--clients 4]
"""

import argparse
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import SQUAD, header, percentile
from bench.hotswap import Call, _client, start_server
from bench.latency import free_port, post
from indexer.build import build_artifact
from service.application.evaluation import load_squad
from service.application.loading import build_config, make_encoder
from service.settings import Settings

BATCH = 64


def wait_job(base: str, job_id: str) -> dict[str, object]:
    import json
    import urllib.request

    while True:
        with urllib.request.urlopen(f"{base}/v1/jobs/{job_id}", timeout=60) as r:
            job: dict[str, object] = json.loads(r.read())
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=1500)
    ap.add_argument("--ingest", type=int, default=567)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    header("ingestion, then compaction under load, vs a full rebuild")
    paragraphs = load_squad(SQUAD).paragraphs
    base_docs, new_docs = paragraphs[: args.base], paragraphs[args.base : args.base + args.ingest]
    settings = Settings()
    encoder, config = make_encoder(settings), build_config(settings)
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "base"
        build_artifact(base_docs, index, encoder, config, progress=False)
        port = free_port()
        server = start_server(index, Path(tmp) / "registry", port)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            for i in range(0, len(new_docs), BATCH):
                upsert = [asdict(d) for d in new_docs[i : i + BATCH]]
                job = wait_job(url, str(post(url + "/v1/documents", {"upsert": upsert})[1]["job_id"]))
                assert job["state"] == "done", job
            ingest_s = time.perf_counter() - started

            steady: list[list[Call]] = [[] for _ in range(args.clients)]
            until = time.perf_counter() + 5
            threads = [threading.Thread(target=_client, args=(port, until, steady[c], c)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

            during: list[list[Call]] = [[] for _ in range(args.clients)]
            deadline = [float("inf")]
            threads = [threading.Thread(target=_loop, args=(port, deadline, during[c], c)) for c in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            refresh = wait_job(url, str(post(url + "/admin/indexes/default/refresh", {})[1]["job_id"]))
            time.sleep(0.5)
            deadline[0] = 0.0
            for t in threads:
                t.join()
        finally:
            server.terminate()
            server.wait(timeout=30)

        rebuild_started = time.perf_counter()
        build_artifact(base_docs + new_docs, Path(tmp) / "rebuilt", encoder, config, progress=False)
        rebuild_s = time.perf_counter() - rebuild_started

    assert refresh["state"] == "done", refresh
    info = refresh["index"]
    assert isinstance(info, dict)
    calls_steady = [c for cs in steady for c in cs]
    calls_during = [c for cs in during for c in cs]
    failures = [c for c in calls_steady + calls_during if not 200 <= c.status < 300]
    versions = sorted({c.version for c in calls_during})
    compaction_s = float(info["seconds"])

    def ms(calls: list[Call], q: float) -> float:
        return percentile([(c.end - c.start) * 1000 for c in calls], q)

    print(f"base version: {len(base_docs)} paragraphs; ingested {len(new_docs)} in batches of {BATCH}")
    print(f"ingestion: {ingest_s:.1f} s, {len(new_docs) / ingest_s:.1f} documents/s (202 -> job done)")
    print(f"compaction (refresh job): {compaction_s:.2f} s; full rebuild of the same documents: {rebuild_s:.1f} s")
    print(f"compaction / rebuild: {compaction_s / rebuild_s:.3f}x ({rebuild_s / compaction_s:.0f}x faster)")
    print(
        f"{args.clients} clients /v1/retrieve: steady p50 {ms(calls_steady, 50):.1f} ms "
        f"({len(calls_steady)} requests), "
        f"during refresh p50 {ms(calls_during, 50):.1f} ms, p99 {ms(calls_during, 99):.1f} ms ({len(calls_during)})"
    )
    print(f"versions seen during the refresh: {len(versions)}; non-2xx responses: {len(failures)}")


def _loop(port: int, deadline: list[float], out: list[Call], seed: int) -> None:
    """A client that runs until deadline[0] is lowered."""
    while time.perf_counter() < deadline[0]:
        _client(port, time.perf_counter() + 0.5, out, seed)


if __name__ == "__main__":
    main()
